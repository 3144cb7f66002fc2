"""DiffCLIP as the vision tower of a LLaVA: building, loading with and without the package, the conversations'
targets, the two training stages with Accelerate, resuming, and bad input."""

import json
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from accelerate import Accelerator
from conftest import (
    REPO_ROOT,
    WITHOUT_MODELING_DIFFCLIP,
    accelerate_launch,
    load_script,
    run_metrics,
    run_script,
)
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Regex, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    BertConfig,
    BertLMHeadModel,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    pipeline,
)

from diffclip_lab.core.errors import UserError
from diffclip_lab.demo.language_model import tiny_language_model
from diffclip_lab.training.recipes import VLM_RECIPES
from diffclip_lab.training.runs import BatchPlan, TrainingState, check_finite
from diffclip_lab.vlm import scenes
from diffclip_lab.vlm.composition import training_dtypes
from diffclip_lab.vlm.conversations import (
    IGNORE,
    Conversation,
    ConversationEncoder,
    ModalityGroupedSampler,
    collate_conversations,
    load_conversations,
    modality_grouped_indices,
)
from diffclip_lab.vlm.stages import freeze, stage_options
from modeling_diffclip import DiffCLIPLlavaForConditionalGeneration, DiffCLIPModel


BUILD = load_script("convert/build_llava.py")
TRAIN_VLM = REPO_ROOT / "examples" / "train_vlm.py"
TRAIN_VLM_SCRIPT = load_script("examples/train_vlm.py")


@pytest.fixture(scope="module")
def parts(saved_tiny_models, tmp_path_factory):
    """A tiny DiffCLIP and CLIP (32 px, 16 image patches) and a tiny Llama that knows the demo's words."""
    root = tmp_path_factory.mktemp("vlm-parts")
    model, tokenizer = tiny_language_model(scenes.vocabulary(), hidden_size=32)
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return {**saved_tiny_models, "lm": root / "lm"}


@pytest.fixture(scope="module")
def built(parts, tmp_path_factory):
    output = tmp_path_factory.mktemp("vlm") / "diffclip-llava"
    assert (
        run_script(
            BUILD, ["--vision_model", parts["diffclip"], "--language_model", parts["lm"], "--output_dir", output]
        )
        == 0
    )
    return output


def scene_image(seed=0) -> Image.Image:
    return scenes.render_scene(random.Random(seed))[0]


def test_the_parts_are_copied_exactly_and_layer_minus_2_feeds_the_projector(parts, built):
    model = AutoModelForImageTextToText.from_pretrained(built).eval()
    assert type(model) is DiffCLIPLlavaForConditionalGeneration
    diffclip = DiffCLIPModel.from_pretrained(parts["diffclip"]).eval()
    language_model = AutoModelForCausalLM.from_pretrained(parts["lm"])
    tower = model.model.vision_tower.state_dict()
    for name, tensor in diffclip.vision_model.state_dict().items():
        torch.testing.assert_close(tower[name], tensor, atol=0, rtol=0, msg=name)
    ours = {
        **{f"model.{k}": v for k, v in model.model.language_model.state_dict().items()},
        **{f"lm_head.{k}": v for k, v in model.lm_head.state_dict().items()},
    }
    for name, tensor in language_model.state_dict().items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":  # one row more: the <image> token
            torch.testing.assert_close(ours[name][: tensor.shape[0]], tensor, atol=0, rtol=0, msg=name)
            assert ours[name].shape[0] == tensor.shape[0] + 1
        else:
            torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0, msg=name)
    config = model.config
    assert (config.image_seq_length, config.vision_feature_layer, config.vision_feature_select_strategy) == (
        16,
        -2,
        "default",
    )
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states = diffclip.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        expected = model.model.multi_modal_projector(states)
        features = model.get_image_features(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(torch.stack(features), expected, atol=1e-6, rtol=1e-5)


def test_a_clip_vision_tower_gives_transformers_own_llava(parts, tmp_path):
    output = tmp_path / "clip-llava"
    assert (
        run_script(BUILD, ["--vision_model", parts["clip"], "--language_model", parts["lm"], "--output_dir", output])
        == 0
    )
    model = AutoModelForImageTextToText.from_pretrained(output)
    assert type(model) is LlavaForConditionalGeneration
    assert not list(output.glob("*.py"))  # nothing to trust: Transformers' own code


def test_the_folder_chats_through_the_auto_classes_and_the_pipeline(built):
    processor = AutoProcessor.from_pretrained(built)
    assert processor.image_processor.do_pad  # LLaVA-1.5's padding to a square with the mean colour
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (  # LLaVA's vicuna_v1
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a red circle? ASSISTANT:"
    )
    chat = pipeline("image-text-to-text", model=str(built))
    messages[0]["content"][0]["image"] = scene_image()
    reply = chat(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False})[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    model = AutoModelForImageTextToText.from_pretrained(built).eval()
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 16
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == reply["content"].strip()  # the pipeline is the model


@pytest.mark.slow  # a fresh interpreter
def test_the_folder_loads_where_the_package_is_absent(built, tmp_path):
    script = WITHOUT_MODELING_DIFFCLIP + textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        model = AutoModelForImageTextToText.from_pretrained({str(built)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(built)!r}, trust_remote_code=True)
        torch.manual_seed(0)
        pixel_values = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            features = model.get_image_features(pixel_values=pixel_values).pooler_output[0]
        chat = pipeline("image-text-to-text", model={str(built)!r}, trust_remote_code=True)
        module = type(model.model.vision_tower).__module__
        loaded = "modeling_diffclip" in sys.modules
        print(json.dumps({{"module": module, "loaded": loaded, "features": features.tolist()}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")
    assert not result["loaded"]
    model = AutoModelForImageTextToText.from_pretrained(built).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=torch.randn(1, 3, 32, 32)).pooler_output[0]
    # another process: the same weights, equal up to its kernels' rounding (fp32, 2 layers and the projector)
    torch.testing.assert_close(torch.tensor(result["features"]), expected, atol=1e-6, rtol=1e-5)


def test_the_answers_are_the_only_targets(built):
    processor = AutoProcessor.from_pretrained(built)
    conversation = Conversation(
        "c",
        scene_image(),
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle in the image?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
            {"role": "user", "content": [{"type": "text", "text": "What shapes are in the image?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle."}]},
        ],
    )
    example = ConversationEncoder(processor, 16)(conversation)
    tokens = processor.tokenizer.convert_ids_to_tokens(example["input_ids"].tolist())
    targets = [token for token, label in zip(tokens, example["labels"].tolist(), strict=True) if label != IGNORE]
    assert targets == ["yes", ".", "</s>", "a", "red", "circle", ".", "</s>"]  # each answer and its end, nothing else
    assert tokens.count("<image>") == 16
    labelled = example["labels"] != IGNORE
    assert torch.equal(example["labels"][labelled], example["input_ids"][labelled])
    assert example["pixel_values"].shape == (3, 32, 32)


def write_llava_json(root, records, images=True):
    """LLaVA's format: a JSON list of {id, image, conversations}; the images written beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(records):
        if images and "image" in record:
            scene_image(index).save(root / record["image"])
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json"


def test_bad_conversations_are_refused_in_one_line(tmp_path):
    good = {
        "id": "a",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yes."}],
    }
    cases = {
        "no_image_token": (
            {**good, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]},
            "must hold one <image>",
        ),
        "missing_file": ({**good, "image": "gone.png"}, "its image .*gone.png does not exist"),
        "roles": (
            {**good, "conversations": [{"from": "gpt", "value": "<image>\nHi"}, {"from": "human", "value": "x"}]},
            "turn 0 must be from 'human'",
        ),
    }
    for name, (record, message) in cases.items():
        path = write_llava_json(
            tmp_path / name, [good, record] if name != "missing_file" else [record], images=name != "missing_file"
        )
        with pytest.raises(UserError, match=message):
            load_conversations(str(path))


def test_the_build_refuses_a_model_that_is_not_causal_and_a_vision_model_that_is_not_clip(parts, tmp_path, capsys):
    bert = tmp_path / "bert"
    BertLMHeadModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(bert)
    PreTrainedTokenizerFast.from_pretrained(parts["lm"]).save_pretrained(bert)
    cases = {
        "bert": (["--vision_model", parts["diffclip"], "--language_model", bert], "is not causal"),
        "lm_as_vision": (
            ["--vision_model", parts["lm"], "--language_model", parts["lm"]],
            "is a 'llama' model, not CLIP-family",
        ),
        "absent": (
            ["--vision_model", tmp_path / "no/such/model", "--language_model", parts["lm"]],
            "no such file or folder",
        ),
    }
    for name, (args, message) in cases.items():
        capsys.readouterr()
        assert run_script(BUILD, [*args, "--output_dir", tmp_path / f"out-{name}"]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ")
        assert message in last
        assert not (tmp_path / f"out-{name}").exists()


def demo_data(root, stage, count):
    return scenes.write_conversations(stage, count, root / "data" / stage)


@pytest.mark.slow  # accelerate launch
def test_the_align_stage_trains_the_projector_only(built, tmp_path):
    data = demo_data(tmp_path, "align", 16)
    output = tmp_path / "align"
    args = ["--model", built, "--stage", "align", "--dataset", data, "--output_dir", output, "--recipe", "demo"]
    accelerate_launch(TRAIN_VLM, *args, "--per_device_batch_size", 4, "--max_steps", 3, "--num_workers", 0)
    before, after = load_file(built / "model.safetensors"), load_file(output / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if "multi_modal_projector" in name}
    results = json.loads((output / "eval_results.json").read_text())
    assert (results["stage"], results["global_step"]) == ("align", 3)
    card = (output / "model" / "README.md").read_text()
    assert "--stage align" in card
    assert "pipeline_tag: image-text-to-text" in card


def test_a_conversation_longer_than_max_length_is_refused_in_one_line(built, tmp_path):
    data = demo_data(tmp_path, "align", 4)
    args = ["--model", built, "--stage", "align", "--dataset", data, "--output_dir", tmp_path / "out"]
    args += ["--recipe", "demo", "--per_device_batch_size", 2, "--max_steps", 1, "--max_length", 20]
    with pytest.raises(UserError) as error:  # raised in a loader worker: reaches run_main as the same one line
        TRAIN_VLM_SCRIPT.main([str(arg) for arg in args])
    assert re.fullmatch(r"conversation '.*' is \d+ tokens long, more than --max_length 20; .*", str(error.value))
    for option in ("--max_length", "--model_max_length"):  # a length that cannot hold an image: before any file
        with pytest.raises(UserError, match=f"^{option} 16 cannot hold an image's 16 tokens"):
            TRAIN_VLM_SCRIPT.main(
                [str(arg) for arg in args[:-2]] + [option, "16", "--output_dir", str(tmp_path / "x")]
            )
        assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="^--mixed_precision fp16 has no effect without a GPU"):
        TRAIN_VLM_SCRIPT.main(
            [str(arg) for arg in args] + ["--mixed_precision", "fp16", "--output_dir", str(tmp_path / "y")]
        )
    assert not (tmp_path / "y").exists()


@pytest.mark.slow  # accelerate launch, killed and resumed
def test_a_killed_instruct_stage_resumes_to_the_same_model(built, tmp_path):
    data = demo_data(tmp_path, "instruct", 24)
    common = ["--model", built, "--stage", "instruct", "--dataset", data, "--recipe", "demo", "--num_workers", 0]
    common += ["--per_device_batch_size", 4, "--max_steps", 6, "--checkpointing_steps", 2, "--logging_steps", 1]
    accelerate_launch(TRAIN_VLM, *common, "--output_dir", tmp_path / "whole")
    killed = accelerate_launch(
        TRAIN_VLM, *common, "--output_dir", tmp_path / "killed", kill_at=".checkpoint-4", tmp_path=tmp_path
    )
    assert (tmp_path / "killed" / "checkpoint-2").is_dir(), killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "model").exists()
    accelerate_launch(TRAIN_VLM, *common, "--output_dir", tmp_path / "killed", "--resume_from_checkpoint", "latest")
    expected = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    actual = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    # two processes, whose kernels may round differently: 4 more AdamW steps (lr 1e-3) from the same state agree to
    # 1e-5; another order of data or learning rates moves the weights by 1e-4 or more
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
    resumed, whole = run_metrics(tmp_path / "killed"), run_metrics(tmp_path / "whole")
    for step in range(3, 7):
        assert resumed[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-5), step


def test_the_demo_data_speaks_the_tiny_language_models_words(parts, tmp_path):
    """Every word of the demo's conversations and of POPE's prompt is in the tiny language model's vocabulary."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(parts["lm"])
    texts = scenes.language_texts(50)
    ids = tokenizer(
        texts + ["Is there an orange star in the image?\nAnswer the question using a single word or phrase."]
    )["input_ids"]
    assert tokenizer.unk_token_id not in {token for row in ids for token in row}
    conversations = load_conversations(str(demo_data(tmp_path, "instruct", 20)))
    assert len(conversations) == 20
    for (_, objects), conversation in zip(scenes.scenes("instruct", 20), conversations, strict=True):
        answers = {m["content"][-1]["text"] for m in conversation.messages if m["role"] == "assistant"}
        assert scenes.caption(objects) + "." in answers
        for index, message in enumerate(conversation.messages[:-1]):
            text = message["content"][-1]["text"]
            if text.startswith("Is there"):
                present = any(f" {o} in the image" in text for o in objects)
                assert conversation.messages[index + 1]["content"][0]["text"] == ("Yes." if present else "No.")


# ----------------------------------------------------------------------------------- LLaVA-1.5's recipe, exactly

SYSTEM = (  # LLaVA's conv_vicuna_v1.system, as this word-level tokenizer splits it (words and punctuation)
    "a chat between a curious user and an artificial intelligence assistant . the assistant gives helpful , "
    "detailed , and polite answers to the user ' s questions ."
).split()


@pytest.fixture(scope="module")
def llama_like(parts, tmp_path_factory):
    """A VLM whose tokenizer behaves as Llama's where LLaVA's rules depend on it: `<s>` first, "\\n" a token."""
    root = tmp_path_factory.mktemp("llama-like")
    words = ["\n", ":", *SYSTEM, *scenes.vocabulary(), "render", "short", "caption", "what", "shapes", "are", "hello"]
    model, tokenizer = tiny_language_model(words, hidden_size=32)
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="removed", invert=True)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    assert (
        run_script(
            BUILD, ["--vision_model", parts["diffclip"], "--language_model", root / "lm", "--output_dir", root / "vlm"]
        )
        == 0
    )
    return root / "vlm"


def turn(role, text, image=False):
    return {"role": role, "content": [{"type": "image"}] * image + [{"type": "text", "text": text}]}


CAPTION = Conversation("c", None, [turn("user", "Render a short caption.", True), turn("assistant", "A red circle.")])
TWO_ROUNDS = [
    turn("user", "Is there a red circle in the image?", True),
    turn("assistant", "Yes."),
    turn("user", "What shapes are in the image?"),
    turn("assistant", "A red circle."),
]


def split_targets(example, tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"].tolist())
    labels = example["labels"].tolist()
    pairs = list(zip(tokens, example["input_ids"].tolist(), labels, strict=True))
    assert all(label in (IGNORE, token_id) for _, token_id, label in pairs)  # a target is its own token
    return [t for t, _, label in pairs if label == IGNORE], [t for t, _, label in pairs if label != IGNORE]


def test_stage_1_is_llavas_plain_template(llama_like):
    """preprocess_plain: "<image>" + caption + "\\n" (sep), the human turn dropped; bos and image masked, the caption
    and "\\n" supervised, no "</s>"; and no padding to a square (pretrain.sh's image_aspect_ratio is 'square')."""
    processor = AutoProcessor.from_pretrained(llama_like)
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    conversation = Conversation("c", image, CAPTION.messages)
    example = ConversationEncoder(processor, 16, template="plain", pad_to_square=False)(conversation)
    masked, supervised = split_targets(example, processor.tokenizer)
    assert masked == ["<s>"] + ["<image>"] * 16
    assert supervised == ["a", "red", "circle", ".", "\n"]
    padded = ConversationEncoder(processor, 16, template="chat")(conversation)["pixel_values"]
    cropped = example["pixel_values"]
    assert not torch.equal(padded, cropped)  # a 2:1 red image: cropped it is red everywhere, padded it is not
    assert torch.allclose(cropped, cropped[:, :1, :1].expand_as(cropped))


def test_stage_2_is_llavas_vicuna_v1_with_its_system_prompt(llama_like):
    """preprocess_v1 with conv_vicuna_v1: "{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:
    {a2}</s>"; every answer and its "</s>" supervised, everything else (bos, system, roles, questions) masked."""
    processor = AutoProcessor.from_pretrained(llama_like)
    example = ConversationEncoder(processor, 16)(Conversation("c", scene_image(), TWO_ROUNDS))
    masked, supervised = split_targets(example, processor.tokenizer)
    assert supervised == ["yes", ".", "</s>", "a", "red", "circle", ".", "</s>"]
    question_1 = ["is", "there", "a", "red", "circle", "in", "the", "image", "?"]
    question_2 = ["what", "shapes", "are", "in", "the", "image", "?"]
    assert masked == [
        "<s>", *SYSTEM, "user", ":", *["<image>"] * 16, "\n", *question_1, "assistant", ":",
        "user", ":", *question_2, "assistant", ":",
    ]  # fmt: skip
    tokens = processor.tokenizer.convert_ids_to_tokens(example["input_ids"].tolist())
    assert tokens[tokens.index("</s>") + 1] == "user"  # "</s>" directly followed by "USER:"
    assert tokens[-1] == "</s>"  # no stray trailing token


def test_text_only_conversations_train_without_image_tokens_or_pixels(llama_like, tmp_path):
    record = {"id": "t", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Yes."}]}
    image_record = {
        "id": "i",
        "image": "0.png",
        "conversations": [{"from": "human", "value": "Hi\n<image>"}, {"from": "gpt", "value": "No."}],
    }
    path = write_llava_json(tmp_path, [record, image_record])
    text_only, with_image = load_conversations(str(path))
    assert text_only.image is None
    assert with_image.messages[0]["content"][0] == {"type": "image"}  # the image first, as LLaVA moves it
    processor = AutoProcessor.from_pretrained(llama_like)
    encoder = ConversationEncoder(processor, 16)
    example = encoder(text_only)
    masked, supervised = split_targets(example, processor.tokenizer)
    assert "pixel_values" not in example
    assert masked == ["<s>", *SYSTEM, "user", ":", "hello", "assistant", ":"]
    assert supervised == ["yes", ".", "</s>"]
    batch = collate_conversations([example, encoder(with_image), example], processor.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)  # only the image conversation's
    model = AutoModelForImageTextToText.from_pretrained(llama_like)
    assert torch.isfinite(model(**batch).loss)  # the model reads the one image where its tokens are
    assert "pixel_values" not in collate_conversations([example], processor.tokenizer.pad_token_id)
    with pytest.raises(UserError, match="the plain template .* takes an image"):
        ConversationEncoder(processor, 16, template="plain")(text_only)


def test_conversations_neither_image_nor_text_only_are_refused(tmp_path):
    base = {"conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(UserError, match="conversation '0': turn 0 holds <image> but the conversation has no image"):
        load_conversations(str(write_llava_json(tmp_path / "a", [base])))
    two = {
        "image": "0.png",
        "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}],
    }
    with pytest.raises(UserError, match="conversation '0': an image conversation's first human turn must hold one"):
        load_conversations(str(write_llava_json(tmp_path / "b", [two])))


def test_long_sequences_are_cut_to_model_max_length_as_llava_cuts_them(llama_like):
    processor = AutoProcessor.from_pretrained(llama_like)
    messages = [
        turn("user", "Hello"),
        turn("assistant", "Yes."),
        turn("user", "Hello"),
        turn("assistant", "A red circle."),
    ]
    text_only = Conversation("t", None, messages)
    whole = ConversationEncoder(processor, 16)(text_only)
    cut = ConversationEncoder(processor, 16, model_max_length=len(whole["input_ids"]) - 3)(text_only)
    assert torch.equal(cut["input_ids"], whole["input_ids"][:-3])
    assert torch.equal(cut["labels"], whole["labels"][:-3])
    with pytest.raises(UserError, match="--model_max_length 20 cuts through its 16 image tokens"):
        ConversationEncoder(processor, 16, model_max_length=20)(Conversation("c", scene_image(), TWO_ROUNDS))


def test_batches_are_grouped_by_modality_as_llavas_sampler_groups_them():
    lengths = [random.Random(i).randint(1, 50) * (1 if i % 3 else -1) for i in range(103)]
    batch, processes = 4, 2
    order = modality_grouped_indices(lengths, batch, processes, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(103))
    megabatches = [order[i : i + batch * processes] for i in range(0, len(order), batch * processes)]
    image, text = sum(1 for x in lengths if x > 0), sum(1 for x in lengths if x < 0)
    mixed = (image % 8 != 0) + (text % 8 != 0)  # each modality's last megabatch, joined at the end
    for megabatch in megabatches[: len(megabatches) - (1 if mixed else 0)]:
        assert len({lengths[i] > 0 for i in megabatch}) == 1
        for chunk in (megabatch[:batch], megabatch[batch:]):  # each process's batch, dealt longest first
            assert [abs(lengths[i]) for i in chunk] == sorted((abs(lengths[i]) for i in chunk), reverse=True)
    assert order[-(image % 8 + text % 8) :] == sorted(order[-(image % 8 + text % 8) :])
    conversations = [
        Conversation(str(i), None if n < 0 else "x.png", [turn("user", "w " * abs(n))]) for i, n in enumerate(lengths)
    ]
    sampler = ModalityGroupedSampler(conversations, batch, processes, seed=0)
    assert sampler.lengths == lengths  # LLaVA's modality_lengths: words, negative without an image
    first = list(sampler)
    assert list(sampler) == first  # the same epoch, the same order (a resumed run skips the same batches)
    sampler.set_epoch(1)
    assert list(sampler) != first  # the next epoch reshuffled


def test_llava15_step_counts_keep_the_last_smaller_batch():
    plan = BatchPlan.build(8, 1, None, 256, 558_128, None, 1, warmup_ratio=0.03, drop_last=False)
    assert (plan.max_steps, plan.per_device_batch_size) == (2181, 32)  # LLaVA's stage 1 on 8 GPUs
    assert BatchPlan.build(8, 1, None, 128, 665_298, None, 1, warmup_ratio=0.03, drop_last=False).max_steps == 5198
    assert BatchPlan.build(8, 1, None, 256, 558_128, None, 1, warmup_ratio=0.03).max_steps == 2180  # drop_last
    align = VLM_RECIPES["llava15"]["align"]
    assert (align["template"], align["pad_to_square"], align["drop_last"]) == ("plain", False, False)
    assert VLM_RECIPES["llava15"]["instruct"]["group_by_modality"]


# ------------------------------------------------------------------------- half-precision language models train


@pytest.fixture(scope="module")
def half_lm(tmp_path_factory):
    """The tiny Llama stored in float16, as Vicuna is."""
    root = tmp_path_factory.mktemp("lm16")
    model, tokenizer = tiny_language_model(scenes.vocabulary(), hidden_size=32)
    model.half().save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def test_the_build_writes_the_dtype_it_says(parts, half_lm, tmp_path):
    exact = tmp_path / "fp32"
    assert (
        run_script(BUILD, ["--vision_model", parts["diffclip"], "--language_model", half_lm, "--output_dir", exact])
        == 0
    )
    weights = load_file(exact / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}  # every part trainable, nothing rounded
    language_model = load_file(half_lm / "model.safetensors")
    name = "layers.0.mlp.up_proj.weight"
    ours = next(tensor for key, tensor in weights.items() if key.endswith(name) and "language_model" in key)
    torch.testing.assert_close(ours, language_model[f"model.{name}"].float(), atol=0, rtol=0)  # exact
    half = tmp_path / "bf16"
    args = [
        "--vision_model",
        parts["diffclip"],
        "--language_model",
        half_lm,
        "--output_dir",
        half,
        "--dtype",
        "bfloat16",
    ]
    assert run_script(BUILD, args) == 0
    assert {tensor.dtype for tensor in load_file(half / "model.safetensors").values()} == {torch.bfloat16}
    assert AutoModelForImageTextToText.from_pretrained(half).dtype == torch.bfloat16


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_trainable_weights_are_float32_masters_and_a_float16_model_trains_finite(built, precision):
    """A float16 checkpoint: AdamW on float16 weights turns them NaN after one step (eps and small squared gradients
    round to 0); the trainable weights become float32 masters, the frozen ones what the compute reads."""
    model = AutoModelForImageTextToText.from_pretrained(built).half()
    processor = AutoProcessor.from_pretrained(built)
    freeze(model, "instruct", unfreeze_vision=False)
    changed = training_dtypes(model, precision)
    dtypes = {name: parameter.dtype for name, parameter in model.named_parameters()}
    frozen_dtype = torch.float32 if precision == "no" else torch.float16  # float16 is not bf16 autocast's: float32
    assert {dtypes[n] for n in dtypes if "vision_tower" not in n} == {torch.float32}
    assert {dtypes[n] for n in dtypes if "vision_tower" in n} == {frozen_dtype if precision == "no" else torch.float32}
    assert changed
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    batch = collate_conversations(
        [ConversationEncoder(processor, 16)(Conversation("c", scene_image(), TWO_ROUNDS))] * 2,
        processor.tokenizer.pad_token_id,
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):  # as Accelerate's bf16 on CPU
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_a_non_finite_loss_or_gradient_stops_the_run_in_one_line(tmp_path):
    accelerator = Accelerator()
    module = torch.nn.Linear(2, 1)
    state = TrainingState({})
    state.global_step = 6
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(
        UserError, match=r"^step 7: the loss is not finite \(NaN or infinite\); training stopped, the "
    ):
        check_finite(accelerator, torch.tensor(float("nan")), module, state, tmp_path)
    with pytest.raises(UserError, match=r"the last good checkpoint is .*checkpoint-4 \(--resume_from_checkpoint\)"):
        check_finite(accelerator, torch.tensor(float("inf")), module, state, tmp_path)
    module(torch.ones(1, 2)).sum().backward()
    check_finite(accelerator, torch.tensor(1.0), module, state, tmp_path)  # finite: nothing happens
    module.weight.grad[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"^step 7: a gradient is not finite .* no checkpoint was saved"):
        check_finite(accelerator, torch.tensor(1.0), module, state, tmp_path / "empty")


def test_a_diverging_run_stops_at_its_first_non_finite_step_and_writes_no_model(built, tmp_path):
    data = demo_data(tmp_path, "align", 8)
    args = ["--model", built, "--stage", "align", "--dataset", data, "--output_dir", tmp_path / "out", "--recipe"]
    args += ["demo", "--per_device_batch_size", 2, "--max_steps", 4, "--num_workers", 0, "--learning_rate", 1e30]
    with pytest.raises(UserError, match=r"^step 2: the loss (and a gradient are|is) not finite .* no checkpoint"):
        TRAIN_VLM_SCRIPT.main([str(arg) for arg in args])
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.slow  # accelerate launch, twice
def test_a_float16_model_folder_trains_both_stages_and_is_saved_in_float16(parts, half_lm, tmp_path):
    folder = tmp_path / "vlm16"
    args = ["--vision_model", parts["diffclip"], "--language_model", half_lm, "--output_dir", folder]
    assert run_script(BUILD, [*args, "--dtype", "float16"]) == 0
    before = load_file(folder / "model.safetensors")
    for stage, precision in (("align", "bf16"), ("instruct", "no")):  # bf16 autocast on CPU; float32 compute
        output = tmp_path / stage
        common = ["--model", folder, "--stage", stage, "--dataset", demo_data(tmp_path, stage, 8), "--recipe", "demo"]
        common += ["--per_device_batch_size", 4, "--max_steps", 2, "--num_workers", 0, "--mixed_precision", precision]
        accelerate_launch(TRAIN_VLM, *common, "--output_dir", output)
        after = load_file(output / "model" / "model.safetensors")
        assert {tensor.dtype for tensor in after.values()} == {torch.float16}
        assert all(torch.isfinite(tensor).all() for tensor in after.values())
        changed = {name for name in before if not torch.equal(before[name], after[name])}
        trained = ("multi_modal_projector",) if stage == "align" else ("multi_modal_projector", "language_model")
        assert {name for name in changed if not any(part in name for part in trained)} <= {"lm_head.weight"}
        assert any("multi_modal_projector" in name for name in changed)


@pytest.mark.slow  # accelerate launch, 2 processes
def test_the_fsdp_config_launches_llava15_stage_2_with_text_only_conversations(built, tmp_path):
    """examples/configs/fsdp_vlm.yaml with 2 CPU processes (Accelerate runs FSDP configs as data parallelism on CPU):
    LLaVA-1.5's stage-2 recipe on image and text-only conversations grouped by modality, a few steps to a model."""
    path = demo_data(tmp_path, "instruct", 12)
    records = json.loads(path.read_text())
    text_only = [{"from": "human", "value": "Is there a red circle?"}, {"from": "gpt", "value": "Yes."}]
    records += [{"id": f"text-{index}", "conversations": text_only} for index in range(8)]
    path.write_text(json.dumps(records))
    args = ["--model", built, "--stage", "instruct", "--dataset", path, "--recipe", "llava15", "--num_workers", 0]
    args += ["--global_batch_size", 4, "--max_steps", 3, "--logging_steps", 1, "--output_dir", tmp_path / "out"]
    config = REPO_ROOT / "examples" / "configs" / "fsdp_vlm.yaml"
    accelerate_launch(TRAIN_VLM, *args, processes=2, config_file=config)
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert (results["global_step"], results["num_processes"], results["global_batch_size"]) == (3, 2, 4)
    saved = json.loads((tmp_path / "out" / "run_config.json").read_text())["args"]
    assert (saved["template"], saved["group_by_modality"], saved["model_max_length"]) == ("chat", True, 2048)
    weights = load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_llava15_turns_on_bf16_and_gradient_checkpointing_where_cuda_is(monkeypatch, built):
    """LLaVA's scripts pass --bf16 True --gradient_checkpointing True; no GPU here, so CUDA's presence is patched."""
    args = ["--model", str(built), "--stage", "instruct", "--dataset", "d.json", "--recipe", "llava15"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    options = stage_options(TRAIN_VLM_SCRIPT.parse_args(args), "instruct")
    assert (options.mixed_precision, options.gradient_checkpointing) == ("bf16", True)
    given = TRAIN_VLM_SCRIPT.parse_args([*args, "--mixed_precision", "fp16"])
    assert stage_options(given, "instruct").mixed_precision == "fp16"  # the command line wins
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(UserError, match="^--mixed_precision bf16: this GPU has no bfloat16"):
        stage_options(TRAIN_VLM_SCRIPT.parse_args(args), "instruct")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = stage_options(TRAIN_VLM_SCRIPT.parse_args(args), "instruct")
    assert (options.mixed_precision, options.gradient_checkpointing) == (None, False)  # CPU: as launched


def test_an_offloaded_diffclip_llava_computes_what_the_in_memory_one_does(built, tmp_path):
    """Weights on disk, loaded by Accelerate's hooks module by module: the same logits (fp32, the same kernels, 1e-6).
    The vision tower's sub-layer norms are moved away from ones, so that a weight left unloaded would show."""
    model = AutoModelForImageTextToText.from_pretrained(built)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.model.vision_tower.named_parameters():
            if "diff_norm" in name or "diff_lambda" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "model")
    processor = AutoProcessor.from_pretrained(built)
    inputs = processor(
        images=scene_image(), text="USER: <image>\nIs there a red circle? ASSISTANT:", return_tensors="pt"
    )
    expected = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").eval()
    offloaded = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "10KB"}, offload_folder=tmp_path / "offload"
    ).eval()
    assert set(offloaded.hf_device_map.values()) == {"disk"}
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, expected(**inputs).logits, atol=1e-6, rtol=0)
