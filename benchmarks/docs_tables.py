# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Write the tables of docs/performance.md from the result files in docs/results/ (see
diffclip_lab/benchmarking/tables.py): after rerunning a benchmark with the command the page gives, run

    python benchmarks/docs_tables.py            # rewrites every marked table of docs/performance.md
    python benchmarks/docs_tables.py --check    # exit status 1, naming them, when tables differ from the results
"""

import argparse
from pathlib import Path

from diffclip_lab.benchmarking.tables import tables_in, update
from diffclip_lab.core.cli import ArgumentParser, run_main
from diffclip_lab.core.files import atomic_write_text


DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=Path, default=DOCS / "performance.md", help="the page to write")
    parser.add_argument("--results", type=Path, default=DOCS / "results", help="the folder of result files")
    parser.add_argument("--check", action="store_true", help="only report the tables that differ")
    args = parser.parse_args(argv)
    text = args.page.read_text()
    new = update(text, args.results)
    if args.check:
        old, expected = tables_in(text), tables_in(new)
        stale = [name for name in expected if old[name] != expected[name]]
        for name in stale:
            print(f"{args.page}: table {name} differs from its results; run python benchmarks/docs_tables.py")
        return 1 if stale else 0
    if new != text:
        atomic_write_text(args.page, new)
    print(f"{args.page}: {len(tables_in(new))} tables written from {args.results}")
    return 0


if __name__ == "__main__":
    run_main(main)
