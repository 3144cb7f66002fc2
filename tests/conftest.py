"""Shared test set-up: offline Hub, tiny configs, and the read-only fixtures in ../shared/fixtures."""

import os
import sys
from pathlib import Path

import pytest


# No test may reach the network; these must be set before transformers/huggingface_hub read them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the scripts under convert/ and examples/ are imported by their tests
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
OFFICIAL_TINY = SHARED_FIXTURES / "official-diffclip-tiny"


def tiny_config_kwargs(text=None, vision=None, **kwargs):
    """Keyword arguments of a DiffCLIPConfig small enough for CPU tests (4 heads, 2 layers, 32-px images)."""
    text_config = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                       max_position_embeddings=16)
    vision_config = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                         image_size=32, patch_size=8)
    text_config.update(text or {})
    vision_config.update(vision or {})
    return dict(text_config=text_config, vision_config=vision_config, projection_dim=16, **kwargs)


@pytest.fixture
def tiny_config():
    from modeling_diffclip import DiffCLIPConfig

    return DiffCLIPConfig(**tiny_config_kwargs())


@pytest.fixture(scope="session")
def official_tiny():
    """The tiny checkpoint in the released layout, with the official implementation's inputs and outputs."""
    if not OFFICIAL_TINY.is_dir():
        pytest.skip(f"{OFFICIAL_TINY} is absent: the official fixtures live in ../shared, beside the checkout")
    return OFFICIAL_TINY
