"""`cmgan`: the console script (also ``python -m pipeline``). Each subcommand lives in its own
module under pipeline/commands/."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from pipeline.commands import (benchmark, check_data, report, retrain, run, serve, train,
                                   web)

    parser = argparse.ArgumentParser(
        prog="cmgan",
        description="Cross-modal image<->text retrieval with CM-GANs: a TFX pipeline whose "
                    "SavedModel encoders are served by TF Serving.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the full log (library lines included) on the terminal")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (run, train, check_data, benchmark, serve, retrain, report, web):
        command.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipeline import console

    # Before build_parser imports TensorFlow: library logs to a file, a quiet terminal unless -v.
    console.start(argv)
    args = build_parser().parse_args(argv)
    from components.datasets import DatasetError
    from models.config_errors import ConfigError

    try:
        return args.func(args)
    except (DatasetError, ConfigError) as error:  # bad input: what and where, no traceback
        if args.verbose:
            logging.getLogger("cmgan").error("configuration error", exc_info=True)
        print(f"cmgan: error: {error}", file=sys.stderr)
        return 2
    finally:
        console.stop()
