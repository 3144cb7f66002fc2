"""POPE: answer parsing and scores against hand-computed cases, the split builder, strict question files, and
examples/evaluate_pope.py + compare.py end to end on a tiny LLaVA built here."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import load_script, run_script
from eval_fixtures import RECORD_KEYS
from PIL import Image

from diffclip_lab.core.errors import UserError
from diffclip_lab.evaluation.reports import pope_table
from diffclip_lab.vlm.pope import (
    build_pope_splits,
    check_images,
    is_unknown_answer,
    parse_answer,
    pope_metrics,
    question_text,
    read_object_annotations,
    read_questions,
    write_pope_splits,
)


evaluate_pope = load_script("examples/evaluate_pope.py")
compare = load_script("examples/compare.py")

# what every evaluation record holds, and the answers of each question
POPE_RECORD_KEYS = RECORD_KEYS | {"answers"}


# ------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("answer", "prediction"),
    [
        ("No, there is not.", "no"),
        ("Yes.", "yes"),
        ("There is no dog", "no"),
        ("Yes, there is a dog.", "yes"),
        ("not sure", "no"),
        ("Nope", "yes"),  # not one of the three words
        ("", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No.", "no"),
        ("NO", "yes"),  # the words are matched exactly: "No", "no", "not"
        ("Not sure", "yes"),
        ("Not", "yes"),
        ("no!", "yes"),
        ("no,", "no"),  # commas are removed first
        ("Yes. There is no dog.", "yes"),  # only the first sentence counts
        ("There is a dog. No.", "yes"),
        ("3.5 no", "yes"),  # the first sentence is "3"
        ("No\nthere is none", "yes"),  # words are split on spaces only: "No\nthere" is one word
        ("yes\nno", "yes"),
        (" no", "no"),  # "", "no"
        ("I do not see one", "no"),
        ("I don't see one", "yes"),
        ("There is none", "yes"),
    ],
)
def test_answers_are_parsed_as_llava_does(answer, prediction):
    assert parse_answer(answer) == prediction


def test_metrics_on_a_hand_computed_set():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    predictions = ["yes", "no", "yes", "yes", "no", "no", "no", "no"]
    metrics, counts = pope_metrics(predictions, labels)
    assert counts == {"questions": 8, "TP": 2, "FP": 1, "TN": 3, "FN": 2}
    assert metrics == pytest.approx(
        {"accuracy": 5 / 8, "precision": 2 / 3, "recall": 2 / 4, "f1": 4 / 7, "yes_ratio": 3 / 8}
    )


def test_scores_that_would_divide_by_zero_are_zero():
    metrics, counts = pope_metrics(["no", "no", "no"], ["yes", "no", "no"])  # no "yes" prediction
    assert counts == {"questions": 3, "TP": 0, "FP": 0, "TN": 2, "FN": 1}
    assert metrics == pytest.approx({"accuracy": 2 / 3, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0})
    metrics, _ = pope_metrics(["yes", "no"], ["no", "no"])  # no "yes" label
    assert metrics == pytest.approx({"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.5})


# ---------------------------------------------------------------------------------------------- the builder

# Eight images with two or three objects (plus one with a single object, never eligible for two "yes" questions).
# Over the eight, objects appear bus 6, cup 5, fork 4, dog 3, car 2, person 1 times; co-occurrence counts:
#   bus: cup 4, fork 3, dog 2, car 1        fork: bus 3, cup 2, car 1         cup: bus 4, dog 3, fork 2, person 1
#   dog: cup 3, bus 2, person 1             car: fork 1, bus 1                person: dog 1, cup 1
ANNOTATIONS = [
    ("i1.jpg", ["bus", "fork", "cup"]),
    ("i2.jpg", ["car", "fork"]),
    ("i3.jpg", ["bus", "fork"]),
    ("i4.jpg", ["bus", "cup", "fork"]),
    ("i5.jpg", ["cup", "dog", "bus"]),
    ("i6.jpg", ["dog", "bus", "cup"]),
    ("i7.jpg", ["dog", "cup", "person"]),
    ("i8.jpg", ["bus", "car"]),
    ("single.jpg", ["bus"]),
]


def test_object_annotations_are_read_from_the_pope_repositorys_json_lines(tmp_path):
    """POPE's `coco_ground_truth_segmentation.json`: one JSON object per line with more keys than these two."""
    path = tmp_path / "annotations.json"
    lines = [
        json.dumps({"image": image, "objects": objects, "segmentation": [[0, 1]]}) for image, objects in ANNOTATIONS
    ]
    path.write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")
    assert read_object_annotations(path) == ANNOTATIONS
    path.write_text(lines[0] + '\n{"image": "i2.jpg", "objects": "bus"}\n')
    with pytest.raises(UserError, match=r"annotations.json, line 2: expected"):
        read_object_annotations(path)
    path.write_text(lines[0] + "\nnot json\n")
    with pytest.raises(UserError, match=r"line 2: not JSON"):
        read_object_annotations(path)


# Each image's two "yes" objects (its first two) and, after each, the "no" object chosen for it. Popular: the most
# frequent objects absent from the image. Adversarial: for each "yes" object, the absent object not yet asked that
# co-occurs with it most often (e.g. i4: bus -> cup is there, fork is there, dog; cup -> bus, dog asked, fork there,
# person).
POPULAR = {
    "i1.jpg": ["dog", "car"],
    "i2.jpg": ["bus", "cup"],
    "i3.jpg": ["cup", "dog"],
    "i4.jpg": ["dog", "car"],
    "i5.jpg": ["fork", "car"],
    "i6.jpg": ["fork", "car"],
    "i7.jpg": ["bus", "fork"],
    "i8.jpg": ["cup", "fork"],
}
ADVERSARIAL = {
    "i1.jpg": ["dog", "car"],
    "i2.jpg": ["bus", "cup"],
    "i3.jpg": ["cup", "car"],
    "i4.jpg": ["dog", "person"],
    "i5.jpg": ["fork", "person"],
    "i6.jpg": ["person", "fork"],
    "i7.jpg": ["bus", "fork"],
    "i8.jpg": ["cup", "fork"],
}


def objects_asked(questions: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """{image: [(object, label), ...]} in question order, reading the object back from the question text."""
    asked = {}
    for question in questions:
        name = question["text"].removeprefix("Is there a ").removeprefix("n ").removesuffix(" in the image?")
        asked.setdefault(question["image"], []).append((name, question["label"]))
    return asked


def test_splits_follow_the_pope_sampling():
    splits = build_pope_splits(ANNOTATIONS, num_images=8, objects_per_image=2, seed=0)
    assert list(splits) == ["random", "popular", "adversarial"]
    present = dict(ANNOTATIONS)
    for name, questions in splits.items():
        assert [q["question_id"] for q in questions] == list(range(32))
        assert {tuple(q) for q in questions} == {("question_id", "image", "text", "label")}
        asked = objects_asked(questions)
        assert sorted(asked) == sorted(POPULAR)  # the eight eligible images, never the one with a single object
        for image, pairs in asked.items():
            # yes, no, yes, no: the image's first two objects, each followed by an absent one
            assert [label for _, label in pairs] == ["yes", "no", "yes", "no"]
            assert [o for o, label in pairs if label == "yes"] == present[image][:2]
            negatives = [o for o, label in pairs if label == "no"]
            assert not set(negatives) & set(present[image])
            assert len(set(negatives)) == 2
            if name == "popular":
                assert negatives == POPULAR[image], image
            elif name == "adversarial":
                assert negatives == ADVERSARIAL[image], image
    assert splits == build_pope_splits(ANNOTATIONS, num_images=8, objects_per_image=2, seed=0)
    randoms = {seed: build_pope_splits(ANNOTATIONS, 8, 2, seed=seed)["random"] for seed in range(6)}
    assert len({json.dumps(questions) for questions in randoms.values()}) > 1  # the seed matters


def test_images_are_sampled_among_those_with_enough_objects():
    eligible = {image for image, objects in ANNOTATIONS if len(objects) >= 2}
    chosen = []
    for seed in range(4):
        splits = build_pope_splits(ANNOTATIONS, num_images=5, objects_per_image=2, seed=seed)
        assert splits == build_pope_splits(ANNOTATIONS, num_images=5, objects_per_image=2, seed=seed)
        images = [{q["image"] for q in questions} for questions in splits.values()]
        assert images[0] == images[1] == images[2]  # the same images in the three splits
        assert len(images[0]) == 5
        assert images[0] <= eligible
        assert all(len(questions) == 5 * 4 for questions in splits.values())
        chosen.append(frozenset(images[0]))
    assert len(set(chosen)) > 1
    with pytest.raises(UserError, match="8 images have at least 2 annotated objects; 9 are needed"):
        build_pope_splits(ANNOTATIONS, num_images=9, objects_per_image=2)
    with pytest.raises(UserError, match="too few"):
        build_pope_splits([("a.jpg", ["x", "y"]), ("b.jpg", ["x", "y"])], num_images=2, objects_per_image=2)


def test_sets_of_objects_give_the_same_splits_in_every_process():
    as_sets = [(image, set(objects)) for image, objects in ANNOTATIONS]
    as_sorted_lists = [(image, sorted(objects)) for image, objects in ANNOTATIONS]
    assert build_pope_splits(as_sets, 8, 2, seed=3) == build_pope_splits(as_sorted_lists, 8, 2, seed=3)


def test_questions_use_an_before_vowels():
    assert question_text("dog") == "Is there a dog in the image?"
    assert question_text("orange") == "Is there an orange in the image?"
    assert question_text("umbrella") == "Is there an umbrella in the image?"


def test_written_splits_read_back_as_official_files(tmp_path):
    splits = build_pope_splits(ANNOTATIONS, num_images=8, objects_per_image=2, seed=0)
    paths = write_pope_splits(splits, tmp_path / "pope", dataset="shapes")
    assert [p.name for p in paths] == [
        "shapes_pope_random.json",
        "shapes_pope_popular.json",
        "shapes_pope_adversarial.json",
    ]
    for path, (name, questions) in zip(paths, splits.items(), strict=True):
        split = read_questions(path)
        assert split.name == name
        assert [(q.question_id, q.image, q.text, q.label) for q in split.questions] == [
            tuple(q.values()) for q in questions
        ]
    assert sorted(p.name for p in (tmp_path / "pope").iterdir()) == sorted(p.name for p in paths)  # no leftovers


# ------------------------------------------------------------------------------------------ question files

OFFICIAL_LINE = {
    "question_id": 0,
    "image": "COCO_val2014_000000548882.jpg",
    "image_id": 548882,
    "text": "Is there a dining table in the image?",
    "label": "yes",
}


def write_jsonl(path, entries):
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("coco_pope_random.json", "random"),
        ("aokvqa_pope_popular.json", "popular"),
        ("gqa_pope_adversarial.jsonl", "adversarial"),
        ("adversarial.jsonl", "adversarial"),
    ],
)
def test_the_split_comes_from_the_file_name(tmp_path, name, split):
    second = {**OFFICIAL_LINE, "question_id": 1, "label": "no"}
    pope_split = read_questions(write_jsonl(tmp_path / name, [OFFICIAL_LINE, second]))
    assert pope_split.name == split
    assert [(q.question_id, q.label) for q in pope_split.questions] == [(0, "yes"), (1, "no")]


def test_bad_question_files_are_refused_with_the_line_and_keys(tmp_path):
    good = {key: value for key, value in OFFICIAL_LINE.items() if key != "image_id"}
    path = write_jsonl(tmp_path / "coco_pope_random.json", [good, {**good, "question_id": 1, "category": "random"}])
    with pytest.raises(
        UserError, match=r"coco_pope_random.json, line 2: keys .*\(unknown category\); a POPE question"
    ):
        read_questions(path)
    write_jsonl(path, [{key: value for key, value in good.items() if key != "label"}])
    with pytest.raises(UserError, match=r"line 1: keys question_id, image, text \(missing label\)"):
        read_questions(path)
    write_jsonl(path, [good, {**good, "question_id": 1, "label": "Yes"}])
    with pytest.raises(UserError, match="line 2: label 'Yes' is neither 'yes' nor 'no'"):
        read_questions(path)
    write_jsonl(path, [good, good])
    with pytest.raises(UserError, match="line 2: question_id 0 appears twice"):
        read_questions(path)
    write_jsonl(path, [good, {**good, "question_id": "0"}])  # JSON keeps 0 and "0" apart; one question all the same
    with pytest.raises(UserError, match=r"line 2: question_id '0' appears twice \(1 and \"1\" are the same\)"):
        read_questions(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match="line 2: not JSON"):
        read_questions(path)
    path.write_text("\n")
    with pytest.raises(UserError, match="holds no questions"):
        read_questions(path)
    with pytest.raises(UserError, match="POPE split 'easy' is not one of random, popular, adversarial"):
        read_questions(write_jsonl(path, [good]), split="easy")
    with pytest.raises(UserError, match="cannot tell the POPE split of .*questions.jsonl"):
        read_questions(write_jsonl(tmp_path / "questions.jsonl", [good]))
    assert read_questions(tmp_path / "questions.jsonl", split="popular").name == "popular"


def test_missing_images_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    split = read_questions(
        write_jsonl(
            tmp_path / "random.jsonl",
            [{**OFFICIAL_LINE, "question_id": i, "image": name} for i, name in enumerate(["a.png", "b.png", "a.png"])],
        )
    )
    check_images(split.questions[:1], tmp_path / "images")
    with pytest.raises(UserError, match=r"1 image\(s\) of the questions are not in .*images: b.png\."):
        check_images(split.questions, tmp_path / "images")
    with pytest.raises(UserError, match="the images folder .*nowhere does not exist"):
        check_images(split.questions, tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- a tiny LLaVA

VOCABULARY = (
    "USER ASSISTANT : ? . , is there a an in the image answer question using single word or phrase yes no not "
    "red green blue square circle dog cat chat between curious user and artificial intelligence assistant gives "
    "helpful detailed polite answers to ' s questions"  # LLaVA's system prompt
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def save_tiny_llava(path, seed: int):
    """
    A Transformers LLaVA small enough for CPU tests, saved with its processor: a CLIP vision tower (32-px images,
    8-px patches: 16 image tokens), a 2-layer Llama over a word-level vocabulary built offline, a LlavaProcessor with
    a CLIP image processor and a plain "USER: ... ASSISTANT:" chat template. Weights are drawn from N(0, 0.3) so that
    greedy answers vary with the question and the image.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    vocabulary = {token: index for index, token in enumerate(specials + VOCABULARY)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # words joined by spaces, no space before punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the class token, which "default" drops
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=len(vocabulary),
        max_position_embeddings=128,
        pad_token_id=vocabulary["<pad>"],
        bos_token_id=vocabulary["<s>"],
        eos_token_id=vocabulary["</s>"],
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=vocabulary["<image>"], vision_feature_layer=-1
    )
    torch.manual_seed(seed)  # every random initialisation, the class embedding's included
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llavas(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-llava")
    return [str(save_tiny_llava(root / name, seed)) for name, seed in (("llava-a", 0), ("llava-b", 1))]


@pytest.fixture(scope="module")
def pope_data(tmp_path_factory):
    """Four noisy colour images and two POPE splits of six questions about them, named as the official files and
    as `<split>.jsonl`."""
    root = tmp_path_factory.mktemp("pope")
    (root / "images").mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230), "grey": (128, 128, 128)}
    for index, (name, rgb) in enumerate(colours.items()):
        noise = np.random.default_rng(index).integers(-60, 61, size=(30, 40, 3))
        Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
    objects = ["red square", "dog", "blue circle", "cat", "green square", "circle"]
    splits = {}
    for split, file_name, images in (
        ("random", "shapes_pope_random.json", ["red.png", "green.png", "blue.png"]),
        ("popular", "popular.jsonl", ["grey.png", "red.png", "blue.png"]),
    ):
        entries = [
            {
                "question_id": 100 * len(splits) + i,
                "image": images[i // 2],
                "text": question_text(objects[i]),
                "label": "yes" if i % 2 == 0 else "no",
            }
            for i in range(6)
        ]
        splits[split] = write_jsonl(root / file_name, entries)
    return root, splits


def run_pope(model, pope_data, output, *extra):
    root, splits = pope_data
    argv = ["--model", model, "--images", root / "images", "--output", output, "--max_new_tokens", 6]
    argv += [a for path in splits.values() for a in ("--questions", path)]
    return evaluate_pope.main([str(arg) for arg in [*argv, *extra]])


@torch.no_grad()
def answer_by_hand(model, processor, image_path, question: str, llava: bool = True) -> str:
    """One greedy answer, prompted with the text written out by hand, independently of pope.py: LLaVA's
    (`model_vqa_loader.py --conv-mode vicuna_v1`: conv_vicuna_v1's system prompt, " ", "USER: <image>\\n" + question,
    " ASSISTANT:"), or this stock model's own chat template."""
    short = f"{question}\nAnswer the question using a single word or phrase."
    prompt = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        f"detailed, and polite answers to the user's questions. USER: <image>\n{short} ASSISTANT:"
        if llava
        else f"USER: <image>\n{short}\nASSISTANT:"
    )
    inputs = processor(text=prompt, images=Image.open(image_path).convert("RGB"), return_tensors="pt")
    output = model.generate(**inputs, do_sample=False, max_new_tokens=6)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_evaluate_pope_end_to_end(tiny_llavas, pope_data, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, splits = pope_data
    output = tmp_path / "pope.json"
    records = run_pope(tiny_llavas[0], pope_data, output, "--batch_size", 4)
    assert json.loads(output.read_text()) == records
    table = capsys.readouterr().out
    assert "| split | accuracy | precision | recall | f1 | yes_ratio | questions | unknown |" in table
    assert "(prompt: vicuna_v1)" in table  # a stock llava model: LLaVA's conversation, not its processor's
    assert [record["split"] for record in records] == ["random", "popular"]
    model = AutoModelForImageTextToText.from_pretrained(tiny_llavas[0]).eval()
    processor = AutoProcessor.from_pretrained(tiny_llavas[0])
    predictions = []
    for record, path in zip(records, splits.values(), strict=True):
        assert set(record) == POPE_RECORD_KEYS
        assert (record["task"], record["main_metric"], record["model_type"]) == ("pope", "accuracy", "llava")
        assert record["dataset"] == str(path)
        questions = [json.loads(line) for line in path.read_text().splitlines()]
        answers = record["answers"]
        assert [(a["question_id"], a["label"]) for a in answers] == [(q["question_id"], q["label"]) for q in questions]
        for answer, question in zip(answers, questions, strict=True):
            # the model's own greedy answer, one question at a time (the script ran batches of 4, left-padded)
            assert answer["answer"] == answer_by_hand(
                model, processor, root / "images" / question["image"], question["text"]
            )
            assert answer["prediction"] == parse_answer(answer["answer"])
            assert answer["unknown"] == (answer["prediction"] == "yes" and "yes" not in answer["answer"].lower())
        assert record["counts"]["unknown_answers"] == sum(a["unknown"] for a in answers)
        assert record["counts"]["prompt"] == "vicuna_v1"
        # the scores, recounted from the file's predictions
        pairs = [(a["prediction"], a["label"]) for a in answers]
        tp, fp = pairs.count(("yes", "yes")), pairs.count(("yes", "no"))
        tn, fn = pairs.count(("no", "no")), pairs.count(("no", "yes"))
        assert [record["counts"][k] for k in ("questions", "TP", "FP", "TN", "FN")] == [6, tp, fp, tn, fn]
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        assert record["metrics"] == pytest.approx(
            {
                "accuracy": (tp + tn) / 6,
                "precision": precision,
                "recall": recall,
                "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                "yes_ratio": (tp + fp) / 6,
            }
        )
        predictions += [a["prediction"] for a in answers]
    assert set(predictions) == {"yes", "no"}  # the seeded model answers both ways, so the scores are not trivial


def test_compare_shows_pope_as_table_3(tiny_llavas, pope_data, tmp_path):
    first = run_pope(tiny_llavas[0], pope_data, tmp_path / "a.json")
    second = run_pope(tiny_llavas[1], pope_data, tmp_path / "b.json", "--batch_size", 3)
    plots = tmp_path / "plots"
    text = compare.main(
        [str(tmp_path / "b.json"), str(tmp_path / "a.json"), "--baseline", "llava-a", "--plot_dir", str(plots)]
    )
    generic, pope = text.split("\n\nPOPE (%)")
    assert generic.splitlines()[0] == "| task | dataset | metric | llava-a | llava-b | Δ llava-b |"
    accuracy = next(line for line in generic.splitlines() if "popular.jsonl | accuracy |" in line)
    assert f"| {first[1]['metrics']['accuracy']:.4f} | {second[1]['metrics']['accuracy']:.4f} |" in accuracy
    lines = pope.splitlines()
    assert lines[2] == "| split | metric | llava-a | llava-b |"
    for split, a, b in zip(("random", "popular"), first, second, strict=True):
        for metric, label in (("accuracy", "accuracy"), ("recall", "recall"), ("yes_ratio", "yes ratio")):
            base, other = round(100 * a["metrics"][metric], 2), round(100 * b["metrics"][metric], 2)
            assert f"| {split} | {label} | {base:.2f} | {other:.2f} ({other - base:+.2f}) |" in lines
    assert not any("adversarial" in line for line in lines)
    with Image.open(plots / "pope_bars.png") as figure:
        assert figure.format == "PNG"
        assert figure.size[0] > 600


def pope_result(model: str, split: str, **metrics) -> dict:
    return {"model": model, "task": "pope", "dataset": f"coco_pope_{split}.json", "split": split, "metrics": metrics}


def test_the_table_3_layout_with_differences_to_the_baseline():
    records = [
        pope_result("runs/clip-llava", "random", accuracy=0.8411, precision=0.9, recall=0.75, f1=0.8, yes_ratio=0.45),
        pope_result(
            "runs/diffclip-llava", "random", accuracy=0.8531, precision=0.88, recall=0.7712, f1=0.82, yes_ratio=0.5
        ),
        pope_result("runs/clip-llava", "adversarial", accuracy=0.8, precision=0.8, recall=0.7, f1=0.75, yes_ratio=0.4),
        pope_result(
            "runs/diffclip-llava", "adversarial", accuracy=0.79, precision=0.8, recall=0.70004, f1=0.7, yes_ratio=0.4
        ),
        {"model": "runs/clip-llava", "task": "zeroshot", "dataset": "wds_cifar10", "metrics": {"acc1": 0.5}},
    ]
    assert pope_table(records, "runs/clip-llava").splitlines() == [
        "| split | metric | clip-llava | diffclip-llava |",
        "|---|---|---|---|",
        "| random | accuracy | 84.11 | 85.31 (+1.20) |",
        "| random | precision | 90.00 | 88.00 (-2.00) |",
        "| random | recall | 75.00 | 77.12 (+2.12) |",
        "| random | F1 | 80.00 | 82.00 (+2.00) |",
        "| random | yes ratio | 45.00 | 50.00 (+5.00) |",
        "| adversarial | accuracy | 80.00 | 79.00 (-1.00) |",
        "| adversarial | precision | 80.00 | 80.00 (+0.00) |",
        "| adversarial | recall | 70.00 | 70.00 (+0.00) |",
        "| adversarial | F1 | 75.00 | 70.00 (-5.00) |",
        "| adversarial | yes ratio | 40.00 | 40.00 (+0.00) |",
    ]
    assert pope_table(records[4:], "runs/clip-llava") is None
    with pytest.raises(UserError, match="runs/clip-llava has two POPE random results"):
        pope_table([*records, pope_result("runs/clip-llava", "random", accuracy=0.5)], "runs/clip-llava")


# ------------------------------------------------------------------------------------------------ the CLI


def test_bad_input_through_the_command_line(pope_data, tmp_path, capsys):
    """Every one is refused before a model is loaded (the model named here does not exist)."""
    root, splits = pope_data
    good = json.loads(splits["random"].read_text().splitlines()[0])
    bad_files = {
        "unknown key": write_jsonl(tmp_path / "a_pope_random.json", [{**good, "answer": "yes"}]),
        "bad label": write_jsonl(tmp_path / "b_pope_random.json", [{**good, "label": "maybe"}]),
        "missing image": write_jsonl(tmp_path / "c_pope_random.json", [{**good, "image": "nowhere.png"}]),
    }
    cases = [
        ([bad_files["unknown key"]], [], r"line 1: keys .* \(unknown answer\)"),
        ([bad_files["bad label"]], [], r"label 'maybe' is neither 'yes' nor 'no'"),
        ([bad_files["missing image"]], [], r"1 image\(s\) of the questions are not in .*: nowhere.png\."),
        ([splits["random"]], ["--split", "hard"], r"POPE split 'hard' is not one of random, popular, adversarial"),
        ([splits["random"], splits["popular"]], ["--split", "random"], r"1 --split for 2 --questions"),
        ([splits["random"], splits["random"]], [], r"two question files are the same split"),
    ]
    for questions, extra, message in cases:
        output = tmp_path / "out.json"
        argv = ["--model", tmp_path / "no-model", "--images", root / "images", "--output", output, *extra]
        assert run_script(evaluate_pope, argv + [a for q in questions for a in ("--questions", q)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("error: ")
        assert re.search(message, err[0]), err[0]
        assert not output.exists()


def test_the_processor_prompt_is_the_models_own_template(tiny_llavas, pope_data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, splits = pope_data
    records = run_pope(tiny_llavas[0], pope_data, tmp_path / "pope.json", "--prompt", "processor")
    model = AutoModelForImageTextToText.from_pretrained(tiny_llavas[0]).eval()
    processor = AutoProcessor.from_pretrained(tiny_llavas[0])
    questions = [json.loads(line) for line in splits["random"].read_text().splitlines()]
    for answer, question in zip(records[0]["answers"], questions, strict=True):
        expected = answer_by_hand(model, processor, root / "images" / question["image"], question["text"], llava=False)
        assert answer["answer"] == expected


@pytest.mark.parametrize(
    ("answer", "unknown"),
    [("Yes", False), ("yes, there is", False), ("Yes!", False), ("No", False), ("not sure", False),
     ("", True), ("Nope", True), ("cat phrase", True), ("There is a dog. Yes.", True), ("YES.", False)],
)  # fmt: skip
def test_answers_read_as_yes_without_a_yes_are_unknown(answer, unknown):
    assert is_unknown_answer(answer) == unknown
    if unknown:
        assert parse_answer(answer) == "yes"  # LLaVA's rule, kept: counted, not changed
