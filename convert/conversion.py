"""What the conversion scripts share: their error, their output options, and how a conversion ends."""

import argparse
import sys
from collections.abc import Callable

from modeling_diffclip.publishing import OutputDirectoryError, push_folder_to_hub


class ConversionError(Exception):
    """A model that cannot be converted; the message says what is wrong and what to do."""


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", required=True, help="folder to write (must be empty or absent)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")


def convert_and_publish(args: argparse.Namespace, convert: Callable[[], str], commit_message: str) -> int:
    """
    Run `convert` (it writes `args.output_dir` and returns what to report), upload the folder if `--push_to_hub`
    was given, and turn a conversion error into one line on stderr and exit status 1.
    """
    try:
        print(convert())
        if args.push_to_hub:
            url = push_folder_to_hub(args.output_dir, args.push_to_hub, args.private, commit_message)
            print(f"Uploaded to {url}")
    except (ConversionError, OutputDirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
