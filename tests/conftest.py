"""Shared test set-up: offline Hub, tiny configs, and the read-only fixtures in ../shared/fixtures."""

import hashlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import HubServer


# No test may reach the network; these must be set before transformers/huggingface_hub read them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' tensors are tiny: a second intra-op thread costs synchronisation, up to 100× a step's time on a loaded
# machine, and buys nothing.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
OFFICIAL_TINY = SHARED_FIXTURES / "official-diffclip-tiny"


def load_script(relative_path: str):
    """A script of examples/, convert/ or benchmarks/ imported from its file, as a module of its own name (scripts
    are no package, and their folders are not put on sys.path)."""
    name = "script_" + relative_path.removesuffix(".py").replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(script, argv: list) -> int:
    """`script.main(argv)` as its command line runs it: the exit status, and a user error's one line on stderr."""
    from diffclip_lab.core.cli import run_main

    try:
        run_main(lambda: script.main([str(arg) for arg in argv]))
    except SystemExit as exit:
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
            return 1
        return exit.code or 0


def file_identity(path) -> tuple[int, int, str]:
    """A file's inode, modification time and SHA-256: after `backdate`, any rewrite changes one of them (see there)."""
    stat = Path(path).stat()
    return stat.st_ino, stat.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def backdate(paths) -> dict[Path, tuple[int, int, str]]:
    """
    Set each file's modification time to 2001 and return its `file_identity`, to check later that nothing wrote it
    again: a write through a temporary name and a rename (`diffclip_lab.core.files`) leaves a new inode, a write
    in place a modification time of now, which differs from 2001 at any timestamp resolution (comparing a fresh
    file's time does not: on a filesystem with coarse timestamps a rewrite within the same tick keeps it).
    """
    identities = {}
    for path in map(Path, paths):
        os.utime(path, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
        identities[path] = file_identity(path)
    return identities


# λ_init of the "dynamic" schedule (DiffCLIP*): the Differential Transformer's 0.8 − 0.6·exp(−0.3·(l − 1)) for the
# 1-based layer l (Ye et al. 2024, §2.1; its reference code passes depth=0 for the first layer), worked out for
# l = 1, …, 12 to 6 decimals. The official DiffCLIP code uses 0.8 in every layer: the "constant" schedule.
DYNAMIC_LAMBDA_INIT = (0.2, 0.355509, 0.470713, 0.556058, 0.619283, 0.666122, 0.700821, 0.726526, 0.745569, 0.759677,
                       0.770128, 0.77787)  # fmt: skip


def tiny_config_kwargs(text=None, vision=None, **kwargs):
    """Keyword arguments of a DiffCLIPConfig small enough for CPU tests (4 heads, 2 layers, 32-px images)."""
    text_config = dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16
    )
    vision_config = dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
    )
    text_config.update(text or {})
    vision_config.update(vision or {})
    return dict(text_config=text_config, vision_config=vision_config, projection_dim=16, **kwargs)


@pytest.fixture
def tiny_config():
    from modeling_diffclip import DiffCLIPConfig

    return DiffCLIPConfig(**tiny_config_kwargs())


@pytest.fixture(scope="session")
def saved_tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random DiffCLIP and a tiny Transformers CLIP (32 px, context 16), each saved with its processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor, clip_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs())).save_pretrained(root / "diffclip")
    DiffCLIPProcessor.from_defaults(image_size=32, context_length=16).save_pretrained(root / "diffclip")
    CLIPModel(CLIPConfig(**tiny_config_kwargs())).save_pretrained(root / "clip")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(16)).save_pretrained(root / "clip")
    return {"diffclip": root / "diffclip", "clip": root / "clip"}


@pytest.fixture(scope="session")
def official_tiny():
    """The tiny checkpoint in the released layout, with the official implementation's inputs and outputs."""
    if not OFFICIAL_TINY.is_dir():
        pytest.skip(f"{OFFICIAL_TINY} is absent: the official fixtures live in ../shared, beside the checkout")
    return OFFICIAL_TINY


# Prepended to a subprocess script, makes `import modeling_diffclip` fail there, as where this package is absent.
WITHOUT_MODELING_DIFFCLIP = """
import importlib.abc, sys

class _NoDiffCLIP(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_diffclip":
            raise ModuleNotFoundError("modeling_diffclip is not installed here")

sys.meta_path.insert(0, _NoDiffCLIP())
"""


@pytest.fixture
def hub(tmp_path):
    with HubServer(tmp_path / "hub-storage") as server:
        yield server
    # Every route a client used is one the server knows, and nothing went near xet or LFS.
    assert server.unhandled == []
    assert not [line for line in server.requests if "xet" in line.lower() or "lfs" in line.lower()]


def run_client(hub, tmp_path, script, home="hf-home"):
    """Run `script` against `hub` in a fresh interpreter and return the JSON it printed last."""
    env = {name: value for name, value in os.environ.items() if name not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN="test-token",
        HF_HOME=str(tmp_path / home),
        NO_PROXY="127.0.0.1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        WORK=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Wraps a training script: SIGKILLs its own process the moment it would rename a staging folder whose name starts
# with $KILL_AT into place, so the run dies at the same point on any machine, with the previous checkpoint complete and
# a fully written but unnamed staging folder beside it.
KILLED_BY_A_FAULT = """
import os, runpy, signal, sys

for name in ("rename", "replace"):
    def killing(src, dst, *args, _original=getattr(os, name), **kwargs):
        if os.path.basename(os.fspath(src)).startswith(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return _original(src, dst, *args, **kwargs)
    setattr(os, name, killing)
sys.argv[0] = os.environ["SCRIPT"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def accelerate_launch(script, *args, processes=1, timeout=600, config_file=None, kill_at=None, tmp_path=None):
    """
    `accelerate launch script args` as a user would type it (2 CPU processes need ACCELERATE_USE_CPU, see
    docs/pretraining.md); returns its output. With `kill_at` (and a `tmp_path` for the wrapper), the run is
    SIGKILLed as it would rename the staging folder `kill_at...` into place; returns the completed process, which must
    have died.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        env["ACCELERATE_USE_CPU"] = "true"
        command += ["--config_file", str(config_file), "--num_processes", str(processes), "--main_process_port", "0"]
    elif processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
        command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0"]
    else:
        command += ["--num_processes", "1"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if kill_at:
        wrapper = tmp_path / "killed_by_a_fault.py"
        wrapper.write_text(KILLED_BY_A_FAULT)
        env.update(KILL_AT=kill_at, SCRIPT=str(script))
        killed = subprocess.run([*command, str(wrapper), *map(str, args)], env=env, capture_output=True, text=True)
        assert killed.returncode != 0, "the fault was not injected"
        return killed
    completed = subprocess.run(
        [*command, str(script), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return completed.stdout + completed.stderr


def run_metrics(output_dir) -> dict[int, dict]:
    """The last logged record of each step of a run (a resumed run logs again the steps after its checkpoint)."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record for record in records}


# Pretraining on webdataset shards: test_pretrain.py and test_scale_out.py compare their runs with the same reference
PRETRAIN = str(REPO_ROOT / "examples" / "pretrain.py")
NUM_SAMPLES, BAD_KEYS = 48, {"000005": "corrupt image", "000030": "corrupt image", "000017": "empty caption"}
COMMON = ["--max_steps", "12", "--logging_steps", "1", "--num_workers", "0", "--learning_rate", "1e-3"]
# the reference run, and the run killed and resumed, which must end with the same model
CHECKPOINTED = ["--per_device_batch_size", 8, "--checkpointing_steps", 4, "--report_to", "tensorboard", *COMMON]
# two processes of 4 samples per step for 6 steps: one epoch of the two shards of 24
STREAMED = ["--streaming", "--per_device_batch_size", 4, "--max_steps", 6, "--num_workers", 0]


def write_webdataset(root, shards=2):
    """img2dataset's layout: {key}.jpg and {key}.txt in tar shards; three samples are broken on purpose."""
    from diffclip_lab.demo.shapes import render  # imports huggingface_hub, which must see the offline settings above

    root.mkdir(parents=True, exist_ok=True)
    per_shard = NUM_SAMPLES // shards
    for shard in range(shards):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for index in range(shard * per_shard, (shard + 1) * per_shard):
                key = f"{index:06d}"
                image, caption, _ = render(random.Random(index), 32)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=95)
                jpg = buffer.getvalue() if BAD_KEYS.get(key) != "corrupt image" else b"\xff\xd8not a jpeg at all"
                txt = b"" if BAD_KEYS.get(key) == "empty caption" else caption.encode()
                for name, payload in ((f"{key}.jpg", jpg), (f"{key}.txt", txt)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


@pytest.fixture(scope="session")
def webdataset(tmp_path_factory):
    return write_webdataset(tmp_path_factory.mktemp("wds") / "shards")


@pytest.fixture(scope="session")
def one_process_run(webdataset, tmp_path_factory):
    """One process, batch 8, 12 steps, checkpoints every 4: (its folder, its log). Read it; do not write into it."""
    output = tmp_path_factory.mktemp("runs") / "one"
    log = accelerate_launch(PRETRAIN, "--dataset", webdataset, "--output_dir", output, *CHECKPOINTED)
    return output, log
