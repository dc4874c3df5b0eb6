"""`cmgan`: the console script. Each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from pipeline import (report_command, retrain_command, run_command, serve_command,
                          train_command, web_command)

    parser = argparse.ArgumentParser(
        prog="cmgan",
        description="Cross-modal image<->text retrieval with CM-GANs: a TFX pipeline whose "
                    "SavedModel encoders are served by TF Serving.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run_command.register(subparsers)
    train_command.register(subparsers)
    serve_command.register(subparsers)
    retrain_command.register(subparsers)
    report_command.register(subparsers)
    web_command.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # TFX logs whole ExecutionInfo protos at INFO; keep the console readable unless -v.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from components.datasets import DatasetError

    try:
        return args.func(args)
    except DatasetError as error:  # bad input: say what and where, no traceback
        print(f"cmgan: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
