"""examples/study.py and diffclip_lab/evaluation/study.py: the held-out data, the aggregation against hand-computed
values, the commands, and a real tiny study (2 variants × 2 seeds of a few steps) that continues where it stopped."""

import json
import math
import random

import datasets
import pytest
from conftest import backdate, file_identity, load_script, run_script
from PIL import Image

from diffclip_lab.demo.shapes import CLASSNAMES, PAIR_PROPERTIES, render
from diffclip_lab.evaluation import study
from diffclip_lab.evaluation.datasets import load_mmvp, load_split
from diffclip_lab.evaluation.tasks import EvalOptions


STUDY = load_script("examples/study.py")
SMALL_DATA = [
    "--eval_train_examples",
    "150",
    "--eval_test_examples",
    "30",
    "--mmvp_pairs",
    "2",
    "--episodes",
    "20",
    "--max_iter",
    "50",
]


def record(variant, seed, task, metrics, label="shapes"):
    return {"model": f"runs/{variant}-seed{seed}/model", "task": task, "dataset": f"data/{label}", "metrics": metrics,
            "study": {"variant": variant, "seed": seed, "evaluation": f"{task}-{label}", "label": label}}  # fmt: skip


def test_summaries_means_deviations_and_differences_match_hand_computed_values():
    records = [
        record("clip", 0, "zeroshot", {"acc1": 0.50, "acc5": 0.9}),
        record("clip", 1, "zeroshot", {"acc1": 0.70, "acc5": 0.9}),
        record("diffclip", 1, "zeroshot", {"acc1": 0.80}),  # seeds out of order: values come in seed order
        record("diffclip", 0, "zeroshot", {"acc1": 0.90}),
        record("clip", 0, "mmvp", {"colour": 0.2, "size": 0.4, "average": 0.3}),
        record("clip", 1, "mmvp", {"colour": 0.4, "size": 0.4, "average": 0.4}),
        record("diffclip", 0, "mmvp", {"colour": 0.3, "size": 0.5, "average": 0.4}),
        record("diffclip", 1, "mmvp", {"colour": 0.3, "size": 0.3, "average": 0.5}),
    ]
    rows = study.summarize(records, {"zeroshot": ["acc1"]})
    assert [(r.task, r.dataset, r.metric) for r in rows] == [("zeroshot", "shapes", "acc1")]
    assert rows[0].values == {"clip": [0.50, 0.70], "diffclip": [0.90, 0.80]}
    mean, std = study.mean_std([0.50, 0.70])
    assert (mean, std) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))  # (0.1² + 0.1²) / (2 − 1)
    assert study.mean_std([0.3]) == (pytest.approx(0.3), None)
    # 0.85 − 0.6 = 0.25 against 0.0707 + 0.1414: beyond the spread
    assert study.difference([0.90, 0.80], [0.50, 0.70]) == (pytest.approx(0.25), True)
    # 0.1 against 0.0707 + 0.1414: within
    assert study.difference([0.65, 0.75], [0.50, 0.70]) == (pytest.approx(0.1), False)
    assert study.difference([0.9], [0.1]) == (pytest.approx(0.8), False)  # one seed: no spread, nothing counts

    table = study.variant_table(rows, ["clip", "diffclip"], "clip", study.describe)
    assert table.splitlines()[2:] == ["| CLIP | 60.0 ± 14.1 |", "| DiffCLIP | 85.0 ± 7.1 |", "| Δ DiffCLIP | +25.0 |"]
    mmvp = study.summarize(records, {"mmvp": ["*"]})
    assert [r.metric for r in mmvp] == ["colour", "size", "average"]  # every property, the average last
    colour = study.variant_table(mmvp[:1], ["clip", "diffclip"], "clip", lambda r: r.metric)
    assert "| Δ DiffCLIP | ≈ +0.0 |" in colour  # 30 ± 0 vs 30 ± 14.1
    found = study.findings(rows + mmvp, ["clip", "diffclip"], "clip")
    assert found == ["DiffCLIP above CLIP on zero-shot shapes (top-1): +25.0 points (85.0 ± 7.1 vs 60.0 ± 14.1)"]


def test_the_held_out_data_is_balanced_new_and_in_the_documented_layouts(tmp_path):
    root = tmp_path / "data"
    study.write_eval_data(root, 150, 30, 2)
    shapes, shape, colour = (load_split(str(root / name), "test") for name in ("shapes", "shape", "colour"))
    assert shapes.classnames == CLASSNAMES
    assert shapes.labels == [i % 30 for i in range(30)]
    assert (len(shape.classnames), len(colour.classnames)) == (5, 6)
    for index, label in enumerate(shapes.labels):  # the same images, labelled by shape and by colour
        name = CLASSNAMES[label]
        assert name == f"{colour.classnames[colour.labels[index]]} {shape.classnames[shape.labels[index]]}"
        assert name.split(" ")[1] in shapes.captions[index][0]
    train = load_split(str(root / "shapes"), "train")
    assert len(train.labels) == 150
    # drawn from their own seeds: none is an image of the demo's pretraining data
    demo = {render(random.Random(i), 48)[0].tobytes() for i in range(200)}
    assert not demo & {image.tobytes() for image in train.images}
    pairs = load_mmvp(str(root / "mmvp"))
    assert [p.category for p in pairs] == [prop for prop in PAIR_PROPERTIES for _ in range(2)]
    for pair in pairs:
        assert pair.statements[0] != pair.statements[1]
        assert pair.images[0].tobytes() != pair.images[1].tobytes()
    assert len(list((root / "scenes").glob("*.png"))) == 2
    before = backdate(path for path in root.rglob("*") if path.is_file())
    study.write_eval_data(root, 150, 30, 2)  # written once
    assert {path: file_identity(path) for path in root.rglob("*") if path.is_file()} == before


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, capsys):
    output = tmp_path / "study"
    argv = ["--output_dir", str(output), "--variants", "clip", "diffclip-dynamic", "--seeds", "3", "4", "--dry_run"]
    argv += ["--config_file", "examples/configs/multi_gpu.yaml", *SMALL_DATA, "--", "--max_steps", "7"]
    run_script(STUDY, argv)
    lines = capsys.readouterr().out.splitlines()
    launches = [line for line in lines if line.startswith("accelerate launch")]
    assert len(launches) == 4
    assert launches[0] == (
        "accelerate launch -q --config_file examples/configs/multi_gpu.yaml examples/pretrain.py --variant clip "
        f"--seed 3 --output_dir {output}/runs/clip-seed3 --resume_from_checkpoint latest --checkpointing_steps 100 "
        "--max_steps 7"
    )
    assert "--variant diffclip-dynamic --seed 4" in launches[3]
    evaluations = [line for line in lines if line.startswith("python examples/evaluate.py")]
    assert len(evaluations) == 4 * 9  # zero-shot, retrieval, 3 linear probes, 3 few-shots, MMVP per run
    assert any("--task few_shot" in line and "data/colour --episodes 20" in line for line in evaluations)
    assert any(line.startswith("python examples/compare.py") for line in lines)
    assert sum(line.startswith("python examples/attention_maps.py") for line in lines) == 2
    assert not output.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "data/cc3m"], "with --dataset, give held-out data"),
        (["--variants", "diffclip", "diffclip-vision"], "the baseline 'clip' is not among --variants"),
        (["--seeds", "0", "0"], "must not repeat"),
        (["--eval_train_examples", "0"], "--eval_train_examples: 0 is below 1"),
        (["--episodes", "0"], "--episodes: 0 is below 1"),  # evaluate.py's option, as evaluate.py checks it
        (["--seeds", "-1"], "--seeds: -1 is below 0"),
        (["--", "--seed", "4"], "--seed after -- would override what the study sets for each run"),
        (["--", "--output_dir=elsewhere"], "--output_dir after -- would override"),
        (["--num_epochs", "2", "--", "--num_epochs", "3"], "--num_epochs after -- would override"),
        # pretrain.py's own checks, before the study writes or launches anything
        (["--", "--learning_rate", "-1"], "pretrain.py: error: argument --learning_rate: -1 is not above 0"),
        (["--", "--adam_beta2", "1"], "pretrain.py: error: argument --adam_beta2: 1 is outside [0, 1)"),
    ],
)
def test_bad_options_are_refused_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        STUDY.parse_args(["--output_dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def pretraining_data(tmp_path_factory):
    """64 captioned shapes, so that each run's few steps need not wait for the demo's 20,000."""
    examples = [render(random.Random(10_000_000 + i), 48) for i in range(64)]
    dataset = datasets.Dataset.from_dict(
        {"image": [e[0] for e in examples], "caption": [e[1] for e in examples]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    path = tmp_path_factory.mktemp("pretraining") / "shapes"
    dataset.save_to_disk(str(path))
    return path


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_and_continues_where_it_stopped(pretraining_data, tmp_path, capfd):
    def launched() -> list[str]:  # the pretraining commands printed since the last call; the runs' logs go along
        out, err = capfd.readouterr()
        return [line for line in out.splitlines() if line.startswith("accelerate launch")], out + err

    output = tmp_path / "study"
    pretrain = ["--", "--dataset", str(pretraining_data), "--max_steps", "2", "--per_device_batch_size", "8"]
    pretrain += ["--num_workers", "0", "--logging_steps", "1"]
    common = ["--output_dir", str(output), "--variants", "clip", "diffclip", "--checkpointing_steps", "1", *SMALL_DATA]

    report = output / "results.md"
    assert run_script(STUDY, [*common, "--seeds", "0", *pretrain]) == 0
    runs = {name: output / "runs" / f"{name}-seed0" for name in ("clip", "diffclip")}
    for run in runs.values():
        assert json.loads((run / "eval_results.json").read_text())["global_step"] == 2
    first = backdate((output / "results").glob("*/*.json"))
    assert len(first) == 2 * 9
    text = report.read_text()
    assert "## Table 1: linear probe and few-shot" in text
    assert "## Table 2: retrieval" in text
    assert "every Δ is marked" in text  # one seed: no spread
    figures = ["figure1_clip_vs_diffclip", "figure2_attention_1", "figure2_attention_2", "figure4_mmvp_radar"]
    for name in [*figures, "figure5_variants"]:
        with Image.open(output / "figures" / f"{name}.png") as image:
            assert min(image.size) > 200, name
        assert f"figures/{name}.png" in text
    assert "| clip-seed0/model | diffclip-seed0/model |" in (output / "compare" / "table.md").read_text()
    assert len(launched()[0]) == 2

    # a second seed: the first seed's runs and evaluations are kept as they are
    assert run_script(STUDY, [*common, "--seeds", "0", "1", *pretrain]) == 0
    commands, _ = launched()
    assert [command.count("--seed 1 ") for command in commands] == [1, 1]
    assert {path: file_identity(path) for path in first} == first
    assert len(list((output / "results").glob("*/*.json"))) == 4 * 9
    records = study.load_results(output / "results")
    zeroshot = study.summarize(records, {"zeroshot": ["acc1"]})[0]
    expected = [
        json.loads((output / "results" / f"clip-seed{seed}" / "zeroshot-shapes.json").read_text())["metrics"]["acc1"]
        for seed in (0, 1)
    ]
    assert zeroshot.values["clip"] == expected
    table2 = report.read_text().split("## Table 2")[1]
    clip_row = next(line for line in table2.splitlines() if line.startswith("| CLIP |"))
    assert clip_row.endswith(f"| {study._percent(expected)} |")  # zero-shot, the last column

    # a run interrupted after its last checkpoint, before its results: continued from the checkpoint, not redone
    (runs["diffclip"] / "eval_results.json").unlink()
    assert run_script(STUDY, [*common, "--seeds", "0", "1", *pretrain]) == 0
    commands, log = launched()
    assert [command.count("--variant diffclip --seed 0 ") for command in commands] == [1]
    assert f"Resumed from {runs['diffclip'] / 'checkpoint-2'} at step 2" in log
    assert (runs["diffclip"] / "eval_results.json").exists()


def test_a_study_of_the_users_data_evaluates_each_held_out_dataset_by_what_it_holds(tmp_path, capsys):
    output = tmp_path / "study"
    argv = ["--output_dir", str(output), "--variants", "clip", "diffclip", "--seeds", "0", "--dry_run"]
    argv += ["--dataset", "data/cc3m", "--eval_dataset", "data/wds_cifar10", "--eval_dataset", "other/wds_cifar10"]
    argv += ["--retrieval_dataset", "data/wds_flickr30k", "--mmvp_dataset", "data/MMVP_VLM", "--split", "val"]
    run_script(STUDY, argv)
    lines = capsys.readouterr().out.splitlines()
    launches = [line for line in lines if line.startswith("accelerate launch")]
    assert all("--dataset data/cc3m" in line and "--num_epochs" not in line for line in launches)
    evaluations = [line.split(" --model ")[1] for line in lines if line.startswith("python examples/evaluate.py")]
    model = f"{output}/runs/clip-seed0/model"
    assert evaluations[:8] == [
        f"{model} --task zeroshot --dataset data/wds_cifar10 --split val",
        f"{model} --task linear_probe --dataset data/wds_cifar10 --split val --train_split train --max_iter 1000",
        f"{model} --task few_shot --dataset data/wds_cifar10 --split val --train_split train --episodes 5000",
        f"{model} --task zeroshot --dataset other/wds_cifar10 --split val",
        f"{model} --task linear_probe --dataset other/wds_cifar10 --split val --train_split train --max_iter 1000",
        f"{model} --task few_shot --dataset other/wds_cifar10 --split val --train_split train --episodes 5000",
        f"{model} --task retrieval --dataset data/wds_flickr30k --split val",
        f"{model} --task mmvp --dataset data/MMVP_VLM",
    ]
    assert len(evaluations) == 16
    protocol = {"split": "val", "train_split": "train", "episodes": 5, "max_iter": 5}
    user = study.user_evaluations(["a/x", "b/x"], ["c"], ["d"], protocol)
    assert len({e.name for e in user}) == len(user)  # two datasets of one name get their own results files
    for evaluation in user:  # every option is one evaluate.py has
        EvalOptions(dataset=evaluation.dataset, **evaluation.options)
