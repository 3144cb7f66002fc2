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

from diffclip_lab import scenes
from diffclip_lab.cli import UserError
from diffclip_lab.vlm import tiny_language_model
from diffclip_lab.vlm_data import IGNORE, Conversation, ConversationEncoder, load_conversations
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
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "USER: <image>\nIs there a red circle? ASSISTANT:"
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
    args += ["--recipe", "demo", "--per_device_batch_size", 2, "--max_steps", 1, "--max_length", 8]
    with pytest.raises(UserError) as error:  # raised in a loader worker: reaches run_main as the same one line
        TRAIN_VLM_SCRIPT.main([str(arg) for arg in args])
    assert re.fullmatch(r"conversation '.*' is \d+ tokens long, more than --max_length 8; .*", str(error.value))


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
