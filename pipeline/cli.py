"""`cmgan`: the console script. Each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from pipeline import (benchmark_command, check_data_command, report_command,
                          retrain_command, run_command, serve_command, train_command,
                          web_command)

    parser = argparse.ArgumentParser(
        prog="cmgan",
        description="Cross-modal image<->text retrieval with CM-GANs: a TFX pipeline whose "
                    "SavedModel encoders are served by TF Serving.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the full log (library lines included) on the terminal")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_command.register(subparsers)
    train_command.register(subparsers)
    check_data_command.register(subparsers)
    benchmark_command.register(subparsers)
    serve_command.register(subparsers)
    retrain_command.register(subparsers)
    report_command.register(subparsers)
    web_command.register(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
