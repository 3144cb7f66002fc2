# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What every script shares on the command line: the parser, option types, the wrapper that reports a `UserError`,
logging."""

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with an option's error in one line (`prog: error: ...`, status 2) instead of the whole usage
    first: a training script's usage runs to 25 lines, and `--help` prints it when asked."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run a script's `main()` and exit: status 0, or `error: <message>` on stderr and status 1 for a `UserError`."""
    try:
        result = main()
    except UserError as error:
        sys.exit(f"error: {error}")
    sys.exit(result if isinstance(result, int) else 0)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain messages on stderr (Accelerate's loggers in the training scripts print on the main process only)."""
    logging.basicConfig(format="%(message)s", level=level)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script that writes a model folder and may publish it."""
    parser.add_argument("--output_dir", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")


def path_or_repo_id(value: str, option: str) -> str:
    """`value` as given when it is an existing path or can be a Hub repo id ('name', 'org/name'), else one error."""
    if Path(value).exists():
        return value
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise UserError(f"{option} {value}: no such file or folder (nor a Hub repo id).") from None
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    return _bounded_int(text, 0)


def device(text: str) -> str:
    """argparse type: a torch device this machine has ("cpu", "cuda", "cuda:1", "mps")."""
    import torch  # here: cli.py is imported by scripts that run without PyTorch (onnx_zero_shot.py)

    try:
        kind = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (kind.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(kind.type, True)
    if not available:
        raise argparse.ArgumentTypeError(f"{text}: this machine has no such device")
    return text


def random_seed(text: str) -> int:
    """argparse type: a random seed, a whole number in [0, 2**32 - 1] (what NumPy's generator takes)."""
    value = _bounded_int(text, 0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"{value} is above 2**32 - 1")
    return value


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is below {low}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a learning rate, an epsilon)."""
    return _bounded_float(text, 0, float("inf"), low_included=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (a weight decay, warm-up epochs)."""
    return _bounded_float(text, 0, float("inf"))


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (a warm-up ratio)."""
    return _bounded_float(text, 0, 1)


def beta(text: str) -> float:
    """argparse type: a number in [0, 1), an Adam beta (torch refuses 1 and above)."""
    return _bounded_float(text, 0, 1, high_included=False)


def area_fraction(text: str) -> float:
    """argparse type: a number in (0, 1], the smallest share of an image a random crop keeps."""
    return _bounded_float(text, 0, 1, low_included=False)


def _bounded_float(text: str, low: float, high: float, low_included=True, high_included=True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    if value < low or (value == low and not low_included) or value > high or (value == high and not high_included):
        if math.isinf(high):
            raise argparse.ArgumentTypeError(f"{value:g} is {'below' if low_included else 'not above'} {low:g}")
        interval = f"{'[' if low_included else '('}{low:g}, {high:g}{']' if high_included else ')'}"
        raise argparse.ArgumentTypeError(f"{value:g} is outside {interval}")
    return value
