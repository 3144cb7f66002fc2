"""Publishing to and loading from the Hub, for real, against the stand-in Hub of hub_server.py on 127.0.0.1."""

import json

import pytest
import torch
from conftest import REPO_ROOT, WITHOUT_MODELING_DIFFCLIP, run_client, tiny_config_kwargs
from safetensors.torch import load_file


pytestmark = pytest.mark.slow  # fresh interpreters against the Hub stand-in


CONVERTER = REPO_ROOT / "convert" / "convert_official_diffclip.py"


def test_convert_push_and_load_where_the_package_is_absent(hub, tmp_path, official_tiny):
    # 1. the released file is on the Hub, as hammh0a/DiffCLIP_ViTB16_* hold theirs
    run_client(
        hub,
        tmp_path,
        f"""
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("test-org/DiffCLIP_tiny")
        api.upload_file(path_or_fileobj={str(official_tiny / "checkpoint_best.pt")!r},
                        path_in_repo="checkpoint_best.pt", repo_id="test-org/DiffCLIP_tiny")
        print(json.dumps({{}}))
        """,
    )
    # 2. the converter downloads it by repo id, converts, and publishes the folder
    output = tmp_path / "converted"
    pushed = run_client(
        hub,
        tmp_path,
        f"""
        import json, runpy, sys
        sys.argv = ["convert", "--checkpoint", "test-org/DiffCLIP_tiny", "--output_dir", {str(output)!r},
                    "--push_to_hub", "test-user/diffclip-tiny", "--private"]
        try:
            runpy.run_path({str(CONVERTER)!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        from huggingface_hub import HfApi
        info = HfApi().model_info("test-user/diffclip-tiny")
        print(json.dumps({{"files": sorted(s.rfilename for s in info.siblings), "private": info.private}}))
        """,
    )
    assert {
        "model.safetensors",
        "config.json",
        "README.md",
        "modeling_diffclip.py",
        "configuration_diffclip.py",
        "processing_diffclip.py",
        "processor_config.json",
        "tokenizer.json",
    } <= set(pushed["files"])
    assert pushed["private"] is True
    assert "DiffCLIP_tiny for Transformers" in (output / "README.md").read_text()

    # 3. someone without this package pulls it by repo id
    reference = load_file(official_tiny / "reference.safetensors")
    torch.save(reference, tmp_path / "reference.pt")
    official = json.loads((official_tiny / "reference.json").read_text())
    pulled = run_client(
        hub,
        tmp_path,
        WITHOUT_MODELING_DIFFCLIP
        + f"""
import json, torch
from transformers import AutoModel, AutoProcessor, pipeline
from PIL import Image

model = AutoModel.from_pretrained("test-user/diffclip-tiny", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("test-user/diffclip-tiny", trust_remote_code=True)
reference = torch.load({str(tmp_path / "reference.pt")!r})
with torch.no_grad():
    image = model.get_image_features(pixel_values=reference["pixel_values"]).pooler_output
    text = model.get_text_features(input_ids=reference["input_ids"]).pooler_output
ids = processor(text={official["captions"]!r}, padding="max_length")["input_ids"]
classify = pipeline("zero-shot-image-classification", model="test-user/diffclip-tiny", trust_remote_code=True)
scores = classify(Image.new("RGB", (64, 64), "red"), candidate_labels=["a red square", "a dog"])
print(json.dumps({{"module": type(model).__module__, "image": image.tolist(), "text": text.tolist(), "ids": ids,
                  "score_sum": sum(s["score"] for s in scores)}}))
""",
        home="hf-home-of-someone-else",
    )
    assert pulled["module"].startswith("transformers_modules.")
    assert pulled["ids"] == official["official_token_ids"]
    torch.testing.assert_close(torch.tensor(pulled["image"]), reference["image_embed"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(pulled["text"]), reference["text_embed"], atol=1e-5, rtol=0)
    # the local folder's model, up to the rounding of another process's kernels (fp32, 2 layers): ten times closer
    # than to the reference, which another implementation computed
    from modeling_diffclip import DiffCLIPModel

    local = DiffCLIPModel.from_pretrained(output).eval()
    with torch.no_grad():
        local_image = local.get_image_features(pixel_values=reference["pixel_values"]).pooler_output
    torch.testing.assert_close(torch.tensor(pulled["image"]), local_image, atol=1e-6, rtol=1e-5)
    assert abs(pulled["score_sum"] - 1) < 1e-5


def test_push_to_hub_from_python_round_trips(hub, tmp_path):
    """`model.push_to_hub` / `processor.push_to_hub` (what a training script calls) and `from_pretrained` back."""
    config = json.dumps(tiny_config_kwargs(vision=dict(lambda_schedule="dynamic")))
    out = run_client(
        hub,
        tmp_path,
        f"""
        import json, torch
        from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor
        torch.manual_seed(0)
        model = DiffCLIPModel(DiffCLIPConfig(**json.loads({config!r}))).eval()
        model.push_to_hub("test-user/pushed")
        DiffCLIPProcessor.from_defaults(image_size=32).push_to_hub("test-user/pushed")
        ids = torch.tensor([[49406, 320, 1125, 49407]])
        with torch.no_grad():
            print(json.dumps({{"text": model.get_text_features(input_ids=ids).pooler_output.tolist()}}))
        """,
    )
    pulled = run_client(
        hub,
        tmp_path,
        WITHOUT_MODELING_DIFFCLIP
        + """
import json, torch
from transformers import AutoConfig, AutoModel

model = AutoModel.from_pretrained("test-user/pushed", trust_remote_code=True).eval()
config = AutoConfig.from_pretrained("test-user/pushed", trust_remote_code=True)
with torch.no_grad():
    text = model.get_text_features(input_ids=torch.tensor([[49406, 320, 1125, 49407]])).pooler_output
print(json.dumps({"text": text.tolist(), "schedule": config.vision_config.lambda_schedule}))
""",
        home="hf-home-2",
    )
    # two processes, so equal up to their kernels' rounding (fp32, 2 layers)
    torch.testing.assert_close(torch.tensor(pulled["text"]), torch.tensor(out["text"]), atol=1e-6, rtol=1e-5)
    assert pulled["schedule"] == "dynamic"


def test_pretrain_pushes_its_final_model(hub, tmp_path):
    """`examples/pretrain.py --push_to_hub --hub_model_id ID` uploads the saved model, processor and card."""
    pretrain = REPO_ROOT / "examples" / "pretrain.py"
    pushed = run_client(
        hub,
        tmp_path,
        f"""
        import json, runpy, sys
        sys.argv = ["pretrain", "--output_dir", {str(tmp_path / "run")!r}, "--max_steps", "3", "--num_workers", "0",
                    "--push_to_hub", "--hub_model_id", "test-user/shapes-demo", "--hub_private"]
        try:
            runpy.run_path({str(pretrain)!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        from huggingface_hub import HfApi, hf_hub_download
        info = HfApi().model_info("test-user/shapes-demo")
        card = open(hf_hub_download("test-user/shapes-demo", "README.md")).read()
        print(json.dumps({{"files": sorted(s.rfilename for s in info.siblings), "private": info.private,
                          "card": card}}))
        """,
    )
    assert {"model.safetensors", "config.json", "modeling_diffclip.py", "processor_config.json", "README.md"} <= set(
        pushed["files"]
    )
    assert pushed["private"] is True
    assert "zeroshot_top1" in pushed["card"]


def test_a_folder_is_pushed_on_its_own(hub, tmp_path, saved_tiny_models):
    """examples/push_to_hub.py uploads what a run or conversion wrote when its own push could not reach the Hub."""
    script = REPO_ROOT / "examples" / "push_to_hub.py"
    pushed = run_client(
        hub,
        tmp_path,
        f"""
        import json, runpy, sys
        sys.argv = ["push_to_hub", {str(saved_tiny_models["diffclip"])!r}, "--repo_id", "test-user/later"]
        try:
            runpy.run_path({str(script)!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        from huggingface_hub import HfApi
        print(json.dumps({{"files": sorted(s.rfilename for s in HfApi().model_info("test-user/later").siblings)}}))
        """,
    )
    assert {"model.safetensors", "config.json", "modeling_diffclip.py", "processor_config.json"} <= set(
        pushed["files"]
    )
