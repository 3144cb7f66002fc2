"""Upload a model folder (a converted checkpoint, `runs/<run>/model`, an ONNX export) to a Hub repo.

    python examples/push_to_hub.py FOLDER --repo_id ORG/NAME [--private]

For a run or conversion whose own `--push_to_hub` could not reach the Hub: the folder is uploaded as it is, in one
commit, without repeating the work.
"""

import argparse
import logging
from pathlib import Path

from diffclip_lab.core.cli import ArgumentParser, run_main, setup_logging
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.publishing import check_can_push, push_folder_to_hub


logger = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the folder to upload")
    parser.add_argument("--repo_id", required=True, help="the Hub repo, created if it does not exist")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    args = parser.parse_args(argv)
    setup_logging()
    folder = Path(args.folder)
    if not (folder / "config.json").is_file() and not (folder / "onnx_config.json").is_file():
        raise UserError(
            f"{folder} is not a model folder (it has no config.json); give the folder a run or a "
            "conversion wrote, e.g. runs/<run>/model."
        )
    check_can_push(args.repo_id)
    logger.info(f"Uploaded to {push_folder_to_hub(folder, args.repo_id, args.private)}")
    return 0


if __name__ == "__main__":
    run_main(main)
