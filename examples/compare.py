"""Compare evaluation results side by side, with differences, and draw the paper-style plots.

    python examples/compare.py results/*.json [--baseline MODEL] [--plot_dir plots]

Reads the JSON written by `examples/evaluate.py --output` (any number of files, any tasks and datasets) and prints a
Markdown table, one row per task, dataset and metric, one column per model, and the difference of every model to
the baseline (the first model by default), as in the paper's Tables 1-2. Results of `examples/evaluate_pope.py`
get, in addition, a table in the layout of Table 3: one row per POPE split and metric, scores in %, each model's
difference to the baseline in parentheses. Draws grouped bars of each task's main metric per dataset (Figures 1 and
5), a radar plot of the MMVP-VLM categories (Figure 4) and POPE's scores per split.
"""

import argparse
import logging
from pathlib import Path

from diffclip_lab.core.cli import ArgumentParser, run_main, setup_logging
from diffclip_lab.evaluation.reports import compare, load_records


logger = logging.getLogger(__name__)


def main(argv=None) -> str:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON files written by evaluate.py or evaluate_pope.py --output")
    parser.add_argument("--baseline", help="the model the differences are taken against (default: the first)")
    parser.add_argument("--plot_dir", default="plots", help="where the PNG figures go")
    args = parser.parse_args(argv)
    setup_logging()
    records = load_records(args.results)
    table, figures = compare(records, args.baseline or records[0]["model"], Path(args.plot_dir))
    print(table)
    logger.info("Figures: " + ", ".join(str(path) for path in figures))
    return table


if __name__ == "__main__":
    run_main(main)
