# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What a result file records about how it was made."""

from datetime import datetime, timezone

import torch
import transformers

import modeling_diffclip


def provenance() -> dict:
    """What every result record ends with: the library versions and the date."""
    return {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "modeling_diffclip": modeling_diffclip.__version__,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
