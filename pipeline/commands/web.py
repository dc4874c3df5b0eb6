"""``cmgan web``: a small search page on 127.0.0.1 in front of a running ``cmgan serve`` (or
TF Serving): type a sentence, upload an image or pick a gallery item; see the top-k results.

``pipeline/cli.py`` calls ``register(subparsers)``.
"""
from __future__ import annotations

import argparse

from pipeline.config import int_in

DEFAULT_WEB_PORT = 8080


def web(args: argparse.Namespace) -> int:
    """Serves the search page; queries go to <model>-search on --server over gRPC."""
    from serving.web import serve_forever
    from serving.web_backend import WebOptions

    options = WebOptions(server=args.server, model=args.model,
                         model_base_path=args.model_base_path, host=args.host, port=args.port,
                         top_k=args.top_k, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                         timeout_s=args.timeout_s, max_image_pixels=args.max_image_pixels,
                         connection_timeout_s=args.connection_timeout_s)
    serve_forever(options, on_ready=lambda url: print(f"search page on {url}", flush=True))
    return 0


def register(subparsers) -> None:
    """Adds ``web``; it sets ``func``."""
    parser = subparsers.add_parser(
        "web", help="search web page (text, image upload, gallery item) on a running server",
        description=web.__doc__)
    parser.add_argument("--server", default="127.0.0.1:8500",
                        help="gRPC host:port of cmgan serve / TF Serving (default: %(default)s)")
    parser.add_argument("--model", default="cmgan",
                        help="encoder model name; its companion <model>-search answers "
                             "(default: %(default)s)")
    parser.add_argument("--model-base-path", default="serving_models",
                        help="the serving root the server serves (default: %(default)s): the "
                             "gallery listing and the gallery items' embeddings are read from "
                             "<root>/<model>-search/<version>/")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_WEB_PORT,
                        help="HTTP port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--top-k", type=int_in(1, 1000), default=10,
                        help="1 to 1000 (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=5.0,
                        help="largest accepted image upload (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="gRPC deadline")
    parser.add_argument("--max-image-pixels", type=int, default=25_000_000, metavar="N",
                        help="largest width*height of an upload, read from its header before "
                             "anything decodes it (default: %(default)s)")
    parser.add_argument("--connection-timeout-s", type=float, default=30.0,
                        help="drop a client silent this long (default: %(default)s)")
    parser.set_defaults(func=web)

