# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What every script shares on the command line: the one user-error type, the wrapper that reports it, logging."""

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(Exception):
    """Input that cannot be used as given (a path, a dataset, an option); the message says what is wrong and what to
    do. Scripts report it as one line; anything else is a bug and keeps its traceback."""


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run a script's `main()` and exit: status 0, or `error: <message>` on stderr and status 1 for a `UserError`."""
    try:
        result = main()
    except UserError as error:
        sys.exit(f"error: {error}")
    sys.exit(result if isinstance(result, int) else 0)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain messages on stderr for the scripts that are not launched with Accelerate."""
    logging.basicConfig(format="%(message)s", level=level)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script that writes a model folder and may publish it."""
    parser.add_argument("--output_dir", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
