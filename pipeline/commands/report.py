"""``cmgan report``: the retrieval report of one pipeline run as a self-contained HTML page.

``pipeline/cli.py`` calls ``register(subparsers)``. The run is found in the pipeline's ML
Metadata (settings as for ``cmgan run``: defaults, ``--config FILE``, flags).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.commands.flags import add_pipeline_flags, config_from_args


def report(args: argparse.Namespace) -> int:
    """Writes the report of one run (MAP table, blessing, precision-recall and training curves,
    common-space projection, example queries, model card) to --output, figures as PNGs
    beside it."""
    from pipeline.metadata import pipeline_names
    from pipeline.reporting import build_report

    config = config_from_args(args)
    name = config.pipeline_name
    known = pipeline_names(config.metadata_path)
    if name not in known and len(known) == 1 and not args.pipeline_name:
        name = known[0]  # one pipeline in this store: no need to spell its name
    try:
        written = build_report(config.metadata_path, name, args.output, run=args.run,
                               top_k=args.top_k, num_queries=args.queries)
    except (LookupError, FileNotFoundError) as error:
        print(f"cmgan report: {error}", file=sys.stderr)
        return 1
    print(f"report written to {written.html_path}")
    for path in written.png_paths.values():
        print(f"figure {path}")
    return 0


def register(subparsers) -> None:
    """Adds ``report``; it sets ``func``."""
    parser = subparsers.add_parser(
        "report", help="HTML report of one pipeline run (MAP, curves, queries, model card)",
        description=report.__doc__)
    add_pipeline_flags(parser)
    parser.add_argument("--run", default="LATEST",
                        help="LATEST (the newest evaluated run), a run number as listed by "
                             "cmgan history, or a run id (default: %(default)s)")
    parser.add_argument("--output", default="report.html", metavar="FILE.html",
                        help="HTML file to write (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="results shown per example query (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=3,
                        help="example queries per direction (default: %(default)s)")
    parser.set_defaults(func=report)

