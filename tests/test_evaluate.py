"""examples/evaluate.py and examples/compare.py end to end, on tiny datasets in every documented layout."""

import json
import re
import shutil

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import backdate, file_identity, load_script, run_script, tiny_config_kwargs
from eval_fixtures import (
    CLASSNAMES,
    MMVP_CATEGORIES,
    MMVP_PAIRS,
    RECORD_KEYS,
    TEMPLATES,
    colour_image,
    write_clip_benchmark_classification,
    write_clip_benchmark_retrieval,
    write_hf_classification,
    write_mmvp,
)
from PIL import Image

from diffclip_lab.core.errors import UserError
from diffclip_lab.core.formatting import distinct_names
from diffclip_lab.evaluation.datasets import load_split
from diffclip_lab.evaluation.protocols import linear_probe, split_train_validation
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor, DiffCLIPVisionModel


evaluate = load_script("examples/evaluate.py")
compare = load_script("examples/compare.py")


@pytest.fixture(scope="module")
def models(saved_tiny_models):
    return [str(saved_tiny_models["diffclip"]), str(saved_tiny_models["clip"])]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "classification": write_clip_benchmark_classification(root / "wds_colours"),
        "retrieval": write_clip_benchmark_retrieval(root / "wds_colour_captions", images=16),  # more than k=10
        "hf": write_hf_classification(root / "hf_colours"),
        "mmvp": write_mmvp(root / "MMVP_VLM"),
    }


def run(models, task, dataset, tmp_path, *extra):
    output = tmp_path / f"{task}.json"
    records = evaluate.main(
        [
            "--task",
            task,
            "--dataset",
            str(dataset),
            "--output",
            str(output),
            "--num_workers",
            "0",
            "--cache_dir",
            str(tmp_path / "cache"),
            *[a for m in models for a in ("--model", m)],
            *map(str, extra),
        ]
    )
    assert json.loads(output.read_text()) == records
    for record in records:
        assert set(record) == RECORD_KEYS
        assert record["task"] == task
        assert record["main_metric"] in record["metrics"]
    return records


@torch.no_grad()
def diffclip_features(model_path, images, texts=None):
    """Embeddings computed directly with the model and processor, independently of evaluate.py."""
    model, processor = DiffCLIPModel.from_pretrained(model_path).eval(), DiffCLIPProcessor.from_pretrained(model_path)
    image = F.normalize(
        model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output, dim=-1
    )
    if texts is None:
        return image, None
    inputs = processor(text=texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return image, F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)


def test_zeroshot_on_clip_benchmark_layout_is_the_models(models, data, tmp_path, capsys):
    records = run(models, "zeroshot", data["classification"], tmp_path)
    assert [r["model_type"] for r in records] == ["diffclip", "clip"]
    assert records[0]["counts"] == {"images": 12, "classes": 3, "templates": 2}
    table = capsys.readouterr().out
    assert "| model | acc1 | acc5 | mean_per_class_recall |" in table
    # recompute DiffCLIP's top-1 by hand from the same images and prompts
    split = load_split(str(data["classification"]), "test")
    images, texts = diffclip_features(
        models[0], list(split.images), [t.replace("{c}", c) for c in CLASSNAMES for t in TEMPLATES]
    )
    classes = F.normalize(texts.view(3, 2, -1).mean(1), dim=-1)
    expected = ((images @ classes.T).argmax(1) == torch.tensor(split.labels)).float().mean().item()
    assert records[0]["metrics"]["acc1"] == pytest.approx(expected, abs=1e-6)
    assert records[0]["metrics"]["acc5"] == 1.0  # 3 classes: always in the top 5


def test_zeroshot_on_a_datasets_folder(models, data, tmp_path):
    records = run(models[:1], "zeroshot", data["hf"], tmp_path)
    assert records[0]["counts"]["classes"] == 3
    assert records[0]["counts"]["templates"] == 1


def recall_by_hand(model_path, split, k) -> dict[str, float]:
    """Recall@k from embeddings computed directly: a caption finds its image, and a captioned image one of its
    captions, when fewer than k candidates score higher than it."""
    texts = [(caption, image) for image, captions in enumerate(split.captions) for caption in captions]
    images, captions = diffclip_features(model_path, list(split.images), [caption for caption, _ in texts])
    scores = captions @ images.T
    found_images = [int((scores[t] > scores[t, image]).sum()) < k for t, (_, image) in enumerate(texts)]
    found_captions = []
    for image in sorted({image for _, image in texts}):
        best = max(scores[t, image] for t, (_, own) in enumerate(texts) if own == image)
        found_captions.append(int((scores[:, image] > best).sum()) < k)
    return {
        f"image_retrieval_recall@{k}": sum(found_images) / len(found_images),
        f"text_retrieval_recall@{k}": sum(found_captions) / len(found_captions),
    }


def test_retrieval(models, data, tmp_path):
    record = run(models[:1], "retrieval", data["retrieval"], tmp_path)[0]
    assert record["counts"] == {"images": 16, "image_queries": 16, "captions": 32, "skipped_captions": 0}
    split = load_split(str(data["retrieval"]), "test")
    expected = {name: value for k in (1, 5, 10) for name, value in recall_by_hand(models[0], split, k).items()}
    assert record["metrics"] == pytest.approx(expected, abs=1e-6)
    assert 0 < expected["image_retrieval_recall@10"] < 1  # 16 images: the top 10 can miss


def test_linear_probe_and_few_shot(models, data, tmp_path):
    probe = run(models, "linear_probe", data["classification"], tmp_path, "--max_iter", 30)
    assert probe[0]["counts"]["validation_split"] == "20% of train"
    assert probe[0]["counts"]["train"] + probe[0]["counts"]["validation"] == 24
    assert probe[0]["counts"]["test"] == 12
    assert probe[0]["metrics"]["costs_tried"] > 7
    # the protocol (tests/test_protocols.py) on the vision tower's pooled features computed directly: the script
    # must give it the right features, splits and labels
    with torch.no_grad():
        tower = DiffCLIPModel.from_pretrained(models[0]).vision_model.eval()
        processor = DiffCLIPProcessor.from_pretrained(models[0])
        train, test = (load_split(str(data["classification"]), split) for split in ("train", "test"))
        features = [
            tower(**processor(images=list(s.images), return_tensors="pt")).pooler_output for s in (train, test)
        ]
    labels = torch.tensor(train.labels)
    fit, held_out = split_train_validation(train.labels)
    expected = linear_probe(
        (features[0][fit], labels[fit]),
        (features[0][held_out], labels[held_out]),
        (features[1], torch.tensor(test.labels)),
        30,
    )
    assert probe[0]["metrics"] == pytest.approx(expected, abs=1e-6)
    episodes = ["--episodes", 30, "--ways", 3, "--shots", 2, "--queries", 2]
    shots = run(models, "few_shot", data["classification"], tmp_path, *episodes)
    assert shots[0]["counts"]["ways"] == 3
    assert shots[0]["counts"]["queries"] == 2
    assert "queries_asked" not in shots[0]["counts"]
    assert shots[0]["metrics"]["episodes"] == 30
    # 4 test images per class: asking for 6 queries uses the 4 there are, and the record says so
    more = run(models[:1], "few_shot", data["classification"], tmp_path / "more", *episodes[:-1], 6)
    assert (more[0]["counts"]["queries"], more[0]["counts"]["queries_asked"]) == (4, 6)
    again = run(models[:1], "few_shot", data["classification"], tmp_path, *episodes)
    assert again[0]["metrics"] == shots[0]["metrics"]  # same seed, same episodes, same cached features


def test_mmvp_is_scored_as_its_authors_do(models, data, tmp_path):
    record = run(models[:1], "mmvp", data["mmvp"], tmp_path)[0]
    assert set(record["metrics"]) == set(MMVP_CATEGORIES) | {"average"}
    assert record["counts"] == {"pairs": 4, "categories": 2}
    expected, question = {}, 1
    for category in MMVP_CATEGORIES:
        folder = data["mmvp"] / "MLLM_VLM Images" / category
        right = 0
        for colours in MMVP_PAIRS:
            images = [Image.open(folder / f"{question + i}.jpg") for i in (0, 1)]
            images, texts = diffclip_features(models[0], images, [f"a photo of the image is {c}" for c in colours])
            similarity = texts @ images.T  # statement i must prefer image i (ties go to the second image)
            right += int(bool(similarity[0, 0] > similarity[0, 1]) and not bool(similarity[1, 0] > similarity[1, 1]))
            question += 2
        expected[category] = right / len(MMVP_PAIRS)
    assert {k: record["metrics"][k] for k in MMVP_CATEGORIES} == pytest.approx(expected)
    assert record["metrics"]["average"] == pytest.approx(sum(expected.values()) / 2)


def test_features_are_cached(models, data, tmp_path):
    run(models[:1], "zeroshot", data["classification"], tmp_path)
    files = backdate((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 2  # the images, the prompts
    run(models[:1], "zeroshot", data["classification"], tmp_path)
    assert {path: file_identity(path) for path in (tmp_path / "cache").glob("*.pt")} == files  # read, not rewritten
    run(models[:1], "zeroshot", data["classification"], tmp_path, "--no_cache", "--split", "train")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_bad_input_gets_a_clear_message(models, data, tmp_path):
    with pytest.raises(UserError, match="has no class labels"):
        run(models[:1], "zeroshot", data["retrieval"], tmp_path)
    with pytest.raises(UserError, match="no split 'validation'"):
        run(models[:1], "zeroshot", data["classification"], tmp_path, "--split", "validation")
    for option in ("--templates", "--classnames"):  # not silently the dataset's own
        with pytest.raises(UserError, match=f"{option} {tmp_path / 'typo.txt'}: no such file"):
            run(models[:1], "zeroshot", data["classification"], tmp_path, option, str(tmp_path / "typo.txt"))
    empty = data["classification"].parent / "wds_empty"
    (empty / "test").mkdir(parents=True)
    (empty / "test" / "nshards.txt").write_text("0\n")
    (empty / "classnames.txt").write_text("a\n")
    with pytest.raises(UserError, match="holds no samples"):
        run(models[:1], "zeroshot", empty, tmp_path)
    vision_only = tmp_path / "vision-only"
    DiffCLIPVisionModel(DiffCLIPConfig(**tiny_config_kwargs()).vision_config).save_pretrained(vision_only)
    DiffCLIPProcessor.from_defaults(image_size=32).save_pretrained(vision_only)
    with pytest.raises(UserError, match="is not a dual encoder"):
        run([str(vision_only)], "zeroshot", data["classification"], tmp_path)
    with pytest.raises(UserError, match="MMVP-VLM layout"):
        run(models[:1], "mmvp", data["classification"], tmp_path)
    few = tmp_path / "two-per-class"  # 20 % of 2 images is none: no validation share to choose the cost on
    split = {"image": [Image.new("RGB", (32, 32), (60 * i, 0, 0)) for i in range(4)], "label": [0, 0, 1, 1]}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(split), "test": datasets.Dataset.from_dict(split)}
    ).save_to_disk(str(few))
    with pytest.raises(UserError, match="too few images per class for a validation share"):
        run(models[:1], "linear_probe", few, tmp_path)


def test_compare_prints_differences_and_draws_the_figures(models, data, tmp_path, capsys):
    zeroshot = run(models, "zeroshot", data["classification"], tmp_path)
    mmvp = run(models, "mmvp", data["mmvp"], tmp_path / "m")
    plots = tmp_path / "plots"
    table = compare.main(
        [str(tmp_path / "zeroshot.json"), str(tmp_path / "m" / "mmvp.json"), "--plot_dir", str(plots)]
    )
    header = table.splitlines()[0]
    assert header == "| task | dataset | metric | diffclip | clip | Δ clip |"
    acc1_row = next(line for line in table.splitlines() if "| zeroshot |" in line and "| acc1 |" in line)
    delta = zeroshot[1]["metrics"]["acc1"] - zeroshot[0]["metrics"]["acc1"]
    assert acc1_row.endswith(f"| {delta:+.4f} |")
    assert table.splitlines()[2].split("|")[3].strip() == "average"  # the main metric leads its group
    assert f"{mmvp[0]['metrics']['average']:.4f}" in table
    for name in ("zeroshot_bars.png", "mmvp_radar.png"):
        with Image.open(plots / name) as figure:
            figure.verify()
            assert figure.format == "PNG"
            assert figure.size[0] > 300
    with pytest.raises(UserError, match="not among the models"):
        compare.main([str(tmp_path / "zeroshot.json"), "--baseline", "nope", "--plot_dir", str(plots)])


def test_models_are_named_by_their_shortest_distinct_path():
    assert distinct_names(["runs/clip/model", "runs/diffclip/model"]) == {
        "runs/clip/model": "clip/model",
        "runs/diffclip/model": "diffclip/model",
    }
    assert distinct_names(["org/a", "org/b"]) == {"org/a": "a", "org/b": "b"}


def test_the_feature_cache_follows_the_data_not_its_path(models, tmp_path):
    """A dataset rebuilt in place with as many images must not be scored from the old one's cached features."""
    root = write_clip_benchmark_classification(tmp_path / "wds")
    run(models[:1], "zeroshot", root, tmp_path)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # the images, the prompts
    shutil.rmtree(root)
    write_clip_benchmark_classification(root, colour_shift=1)  # every class now shows the next colour
    cached = run(models[:1], "zeroshot", root, tmp_path)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # new image features; the prompts are the same
    fresh = run(models[:1], "zeroshot", root, tmp_path / "fresh", "--no_cache")
    assert cached[0]["metrics"] == fresh[0]["metrics"]


def test_empty_captions_are_skipped_and_counted(models, tmp_path):
    colours = CLASSNAMES * 2
    rows = {
        "image": [colour_image(colour, index) for index, colour in enumerate(colours)],
        "caption": ["a red one", "", "a blue one", "red again", "a green one", "   "],
    }
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "captions"))
    record = run(models[:1], "retrieval", tmp_path / "captions", tmp_path)[0]
    # image→text recall is over the 4 captioned images, text→image recall searches all 6
    assert record["counts"] == {"images": 6, "image_queries": 4, "captions": 4, "skipped_captions": 2}
    split = load_split(str(tmp_path / "captions"), "test")
    expected = {name: value for k in (1, 5, 10) for name, value in recall_by_hand(models[0], split, k).items()}
    assert record["metrics"] == pytest.approx(expected, abs=1e-6)  # 4/6 at k=5 if uncaptioned images were queries


def test_an_image_that_does_not_decode_is_one_line_from_worker_processes(models, tmp_path, capsys):
    root = write_clip_benchmark_classification(tmp_path / "wds", corrupt_sample=5)
    args = ["--task", "zeroshot", "--dataset", root, "--model", models[0], "--no_cache", "--num_workers", 1]
    assert run_script(evaluate, args) == 1
    err = capsys.readouterr().err
    last_line = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: image \d+ of .*/wds/test does not decode \(not an image file Pillow can read\);.*", last_line
    )
    assert "Traceback" not in err
    assert "worker process" not in err


def test_progress_bars_tell_models_apart(saved_tiny_models, data, tmp_path, capsys):
    for run_name, model in (("run-a", "diffclip"), ("run-b", "clip")):
        (tmp_path / run_name).mkdir()
        (tmp_path / run_name / "model").symlink_to(saved_tiny_models[model])
    run([str(tmp_path / "run-a" / "model"), str(tmp_path / "run-b" / "model")], "zeroshot", data["hf"], tmp_path)
    err = capsys.readouterr().err
    assert "run-a/model: " in err
    assert "run-b/model: " in err


def test_compare_shows_scores_not_bookkeeping_and_takes_short_names(models, data, tmp_path):
    run(models, "linear_probe", data["classification"], tmp_path, "--max_iter", 30)
    episodes = ["--episodes", 30, "--ways", 3, "--shots", 2, "--queries", 2]
    shots = run(models, "few_shot", data["classification"], tmp_path, *episodes)
    plots = tmp_path / "plots"
    results = [str(tmp_path / "linear_probe.json"), str(tmp_path / "few_shot.json")]
    table = compare.main([*results, "--baseline", "clip", "--plot_dir", str(plots)])
    lines = table.splitlines()
    assert lines[0] == "| task | dataset | metric | clip | diffclip | Δ diffclip |"
    metrics = {line.split("|")[3].strip() for line in lines[2:]}
    assert metrics == {"acc1", "acc5", "mean_per_class_recall"}  # no cost, costs_tried, episodes, std, interval
    few_shot = next(line for line in lines if "| few_shot |" in line)
    ci = shots[1]["metrics"]["acc1_ci95"]
    assert f"{shots[1]['metrics']['acc1']:.4f} ± {ci:.4f}" in few_shot
    for name in ("linear_probe_bars.png", "few_shot_bars.png"):
        with Image.open(plots / name) as figure:
            assert figure.format == "PNG"
