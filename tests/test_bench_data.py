"""benchmarks/bench_data.py end to end on tiny shards, and its refusals of bad input."""

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import load_script, run_script
from PIL import Image


bench_data = load_script("benchmarks/bench_data.py")
TINY = ["--batch_size", "4", "--batches", "1", "--repeats", "1", "--image_size", "16", "--shuffle_buffer", "2"]


def write_shards(folder, num_shards=2, per_shard=12) -> str:
    """img2dataset's layout, 192 × 128-px JPEGs of noise: the shards as a brace pattern."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for shard in range(num_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for index in range(per_shard):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, size=(128, 192, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                for name, payload in (
                    (f"{shard}{index:04d}.jpg", buffer.getvalue()),
                    (f"{shard}{index:04d}.txt", b"a"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / "{00000..00001}.tar")


@pytest.mark.slow  # starts loader worker processes
def test_benchmark_times_given_shards_and_writes_json(tmp_path, capsys):
    output = tmp_path / "data.json"
    shards = write_shards(tmp_path / "shards")
    argv = ["--shards", shards, "--workers", "0", "1", *TINY, "--compare", "4", "--output", output]
    assert run_script(bench_data, argv) == 0
    payload = json.loads(output.read_text())
    assert payload["script"] == "bench_data"
    assert payload["settings"]["workers"] == [0, 1]
    results = {(r["decoding"], r["workers"]): r for r in payload["results"]}
    assert set(results) == {(decoding, workers) for decoding in ("full", "draft") for workers in (0, 1)}
    for result in results.values():
        assert result["shards"] == "given"
        assert result["images_timed"] == 4 * 1
        assert result["images_per_s"] > 0
        # uint8 pixels, input ids and attention mask (int64, 77 tokens), the skip count
        assert result["batch_bytes"] == 4 * (3 * 16 * 16 + 2 * 77 * 8) + 8
    assert {(need["decoding"], need["shards"]) for need in payload["workers_needed"]} == {
        ("full", "given"),
        ("draft", "given"),
    }
    (difference,) = payload["draft_difference"]
    assert difference["images"] == 4
    assert difference["share_decoded_at_reduced_size"] == 1  # crops of 90 px or more, 2 × 2 × 16 at 1/2
    assert 0 < difference["mean_abs_levels"] <= difference["max_abs_levels"]
    assert "| given | draft | 1 |" in capsys.readouterr().out


def test_benchmark_writes_shards_from_photographs(tmp_path):
    output = tmp_path / "data.json"
    argv = ["--resolutions", "40", "--workers", "0", "--decoding", "full", *TINY, "--compare", "2"]
    assert run_script(bench_data, [*argv, "--data_dir", tmp_path / "shards", "--output", output]) == 0
    (result,) = json.loads(output.read_text())["results"]
    assert (result["shards"], result["workers"], result["decoding"]) == ("40", 0, "full")
    with tarfile.open(tmp_path / "shards" / "40" / "00000.tar") as tar:
        names = tar.getnames()
        image = Image.open(tar.extractfile(names[0]))
    assert [name.rsplit(".", 1)[1] for name in names[:2]] == ["jpg", "txt"]
    assert min(image.size) == 40


def test_bad_input_gets_one_line(tmp_path, capsys):
    absent = str(tmp_path / "{00000..00001}.tar")
    assert run_script(bench_data, ["--shards", absent, *TINY]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: webdataset shard(s) not found: {tmp_path}/00000.tar, {tmp_path}/00001.tar"
    ]
    assert run_script(bench_data, ["--shards", str(tmp_path / "nowhere"), *TINY]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --shards {tmp_path / 'nowhere'}: no webdataset .tar shards there")
    for argv, message in [
        (["--workers", "1", "-1"], "argument --workers: -1 is below 0"),
        (["--batch_size", "0"], "argument --batch_size: 0 is below 1"),
        (["--draft_gap", "0.5"], "--draft_gap 0.5: below 1"),
        (["--crop_scale", "0"], "--crop_scale 0.0: give a fraction of the area in (0, 1]"),
    ]:
        with pytest.raises(SystemExit) as exit:
            bench_data.main(argv)
        assert exit.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
