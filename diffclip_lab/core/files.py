# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Writing files and folders so that readers never see them half-written, and nothing is lost when a write fails;
JSON result files."""

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def check_output_directory(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a `path` that is a file, or a non-empty directory without `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory; choose another output directory.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(
            f"{path} exists and is not empty; choose another output directory or pass --overwrite to replace it."
        )


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """
    Yield an empty temporary directory beside `path` to fill. When the block succeeds it takes `path`'s place with a
    rename, so readers never see a half-written folder; when it fails it is deleted and `path` is left as it was.

    A non-empty `path` is refused unless `overwrite=True`.
    """
    path = Path(path)
    check_output_directory(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would otherwise become the folder's mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if path.exists():
        previous = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(previous)
    staging.rename(path)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; it replaces `path` when the block succeeds, and is deleted
    when it fails, so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    try:
        yield Path(staging)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (UTF-8) through a temporary sibling and a rename."""
    with atomic_file(path) as staging:
        staging.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike | None, payload) -> None:
    """Write `payload` as indented JSON to `path` atomically (`atomic_write_text`); nothing when `path` is None (an
    optional --output). JSON has no NaN or infinity: such floats are written as the strings "nan", "inf", "-inf"."""
    if path is not None:
        atomic_write_text(path, json.dumps(_finite(payload), indent=2) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
