"""The code a checkpoint carries, under the Transformers releases its users have.

A tiny DiffCLIP, its bare towers, a DiffCLIP-LLaVA and, as the control, a Transformers CLIP of the same size are
saved with the installed Transformers, then loaded in fresh virtual environments of other releases, with
`trust_remote_code=True` and without this package, and their token ids, pixels and outputs compared with the saving
environment's. The environments (torch and one Transformers release each) are built once under
`~/.cache/diffclip-transformers-releases` (or `$DIFFCLIP_RELEASES_CACHE`) and reused; building one takes about 4
minutes. `.ci/run` runs this file: `python -m pytest -q -m releases tests/test_transformers_releases.py`.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, WITHOUT_MODELING_DIFFCLIP, load_script, run_script


pytestmark = [pytest.mark.slow, pytest.mark.releases]

# The lowest release `pyproject.toml` declares (2026 Q1; configs with `__init__` arguments, CLIP towers nesting their
# modules), the first with `@strict` dataclass configs (Q1), the first with flat CLIP towers (Q2), one release of each
# quarter since (Q2: 5.12.1, Q3: 5.18.0, Q4: 5.20.2, the first with `SubConfigSpec`), the first whose composite
# configs take plain classes as sub-config specs (5.22.2), and the newest.
SUPPORTED = ["5.0.0", "5.4.0", "5.6.0", "5.12.1", "5.18.0", "5.20.2", "5.22.2", "5.25.0"]
# The last release of Transformers 4: refused at import in one line.
UNSUPPORTED = ["4.57.6"]
REFUSAL = "DiffCLIP needs Transformers 5.0 or newer"
CACHE = Path(os.environ.get("DIFFCLIP_RELEASES_CACHE", Path.home() / ".cache" / "diffclip-transformers-releases"))

BUILD_LLAVA = load_script("convert/build_llava.py")

# Run in each environment: loads the saved folders as a user would and saves what they compute to argv[2].
LOAD = WITHOUT_MODELING_DIFFCLIP + textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    root, out = Path(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    texts = ["a photo of a cat", "two dogs!! and <|endoftext|> 3"]
    results = {"version": transformers.__version__}
    for name in ("diffclip", "clip"):
        model = AutoModel.from_pretrained(root / name, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(root / name, trust_remote_code=True)
        inputs = processor(text=texts, images=images, return_tensors="pt", padding="max_length")
        with torch.no_grad():
            output = model(**inputs)
        results[name] = {
            "module": type(model).__module__,
            "input_ids": inputs["input_ids"],
            "pixel_values": inputs["pixel_values"],
            "text_embeds": output.text_embeds,
            "image_embeds": output.image_embeds,
            "logits_per_image": output.logits_per_image,
        }
    for name in ("diffclip-text", "diffclip-vision"):
        tower = AutoModel.from_pretrained(root / name, trust_remote_code=True).eval()
        tower_inputs = {"input_ids": results["diffclip"]["input_ids"]} if name.endswith("text") else {
            "pixel_values": results["diffclip"]["pixel_values"]
        }
        with torch.no_grad():
            results[name] = {"module": type(tower).__module__, "pooler_output": tower(**tower_inputs).pooler_output}
    llava = AutoModelForImageTextToText.from_pretrained(root / "diffclip-llava", trust_remote_code=True).eval()
    config = llava.config
    input_ids = torch.tensor([[1] + [config.image_token_index] * config.image_seq_length + [4, 5]])
    with torch.no_grad():
        logits = llava(input_ids=input_ids, pixel_values=results["diffclip"]["pixel_values"][:1]).logits
    results["diffclip-llava"] = {"module": type(llava).__module__, "logits": logits}
    torch.save(results, out)
    """
)


def release_environment(version: str) -> Path:
    """The Python of a virtual environment with this torch and Transformers `version`, built the first time (in a
    temporary folder renamed into place, so an interrupted build leaves nothing half made) and reused after."""
    target = CACHE / version
    if not target.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = CACHE / f".building-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", staging], check=True)
        pip = [staging / "bin" / "python", "-m", "pip", "install", "-q"]
        # torch first and pinned, as `.ci/run` installs it: its CPU build, and the kernels of the saving environment
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True, timeout=1800)
        # the saving environment's Pillow, so that pixels can be compared exactly
        pillow = importlib.metadata.version("pillow")
        subprocess.run(
            [*pip, f"transformers=={version}", f"pillow=={pillow}", "safetensors"], check=True, timeout=1800
        )
        try:
            staging.rename(target)
        except OSError:  # another run built it meanwhile
            shutil.rmtree(staging)
    return target / "bin" / "python"


def load(python, saved: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(out.parent / "hf-home"))
    return subprocess.run(
        [str(python), "-c", LOAD, str(saved), str(out)],
        capture_output=True,
        text=True,
        cwd=out.parent,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def saved(saved_tiny_models, tmp_path_factory):
    """The tiny DiffCLIP and CLIP (each with its processor) and a DiffCLIP-LLaVA, saved here, and what they compute
    here (loaded the same way, in a fresh interpreter)."""
    from diffclip_lab.demo.language_model import tiny_language_model
    from modeling_diffclip import DiffCLIPModel

    root = tmp_path_factory.mktemp("releases")
    for name in ("diffclip", "clip"):
        shutil.copytree(saved_tiny_models[name], root / name)
    # bare towers, whose checkpoint keys differ from the dual encoder's (and, before 5.6, from the module names)
    dual = DiffCLIPModel.from_pretrained(root / "diffclip")
    dual.text_model.save_pretrained(root / "diffclip-text")
    dual.vision_model.save_pretrained(root / "diffclip-vision")
    model, tokenizer = tiny_language_model(["cat", "dog"], hidden_size=32)
    model.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    argv = [
        "--vision_model",
        root / "diffclip",
        "--language_model",
        root / "lm",
        "--output_dir",
        root / "diffclip-llava",
    ]
    assert run_script(BUILD_LLAVA, argv) == 0
    completed = load(sys.executable, root, root / "here.pt")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return root, torch.load(root / "here.pt")


def largest_difference(result, expected, name, key):
    return (result[name][key] - expected[name][key]).abs().max().item()


@pytest.mark.parametrize("version", SUPPORTED)
def test_a_saved_diffclip_loads_and_computes_the_same_under_each_release(version, saved, tmp_path):
    root, expected = saved
    completed = load(release_environment(version), root, tmp_path / "there.pt")
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = torch.load(tmp_path / "there.pt")
    assert result["version"] == version
    assert result["diffclip"]["module"].startswith("transformers_modules.")  # the shipped copy, not this package
    assert result["diffclip-llava"]["module"].startswith("transformers_modules.")
    for name in ("diffclip", "clip"):
        assert torch.equal(result[name]["input_ids"], expected[name]["input_ids"]), name
        assert torch.equal(result[name]["pixel_values"], expected[name]["pixel_values"]), name
    # Same weights, same torch: what remains is what Transformers itself changed between the releases, which the CLIP
    # control shows. A DiffCLIP may move by as much as CLIP (twice, for its two softmax maps per head) plus float32
    # rounding of its unit-norm embeddings and logits (1e-5: a 2-layer float32 model's order-of-summation changes).
    for key in ("text_embeds", "image_embeds", "logits_per_image"):
        clip_moved = largest_difference(result, expected, "clip", key)
        diffclip_moved = largest_difference(result, expected, "diffclip", key)
        assert diffclip_moved <= 2 * clip_moved + 1e-5, (key, diffclip_moved, clip_moved)
    for name in ("diffclip-text", "diffclip-vision"):
        assert result[name]["module"].startswith("transformers_modules."), name
        torch.testing.assert_close(
            result[name]["pooler_output"], expected[name]["pooler_output"], atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(
        result["diffclip-llava"]["logits"], expected["diffclip-llava"]["logits"], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("version", UNSUPPORTED)
def test_an_older_release_is_refused_in_one_line_naming_the_release_needed(version, saved, tmp_path):
    root, _ = saved
    completed = load(release_environment(version), root, tmp_path / "there.pt")
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert f"{REFUSAL}, this is {version}: pip install 'transformers>=5.0,<6'" in last_line, completed.stderr[-3000:]


def test_the_declared_range_is_the_tested_one():
    """`pyproject.toml` declares from the lowest release tested here to the next major release."""
    requirement = next(
        line for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines() if '"transformers' in line
    )
    assert requirement.strip().rstrip(",") == f'"transformers>={SUPPORTED[0].removesuffix(".0")},<6"'
    assert min(SUPPORTED, key=lambda v: tuple(map(int, v.split(".")))) == SUPPORTED[0]
