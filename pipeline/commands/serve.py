"""``cmgan serve`` (a TF Serving-protocol gRPC server) and ``cmgan query`` (top-k retrieval).

``pipeline/cli.py`` calls ``register(subparsers)``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.config import int_in

DEFAULT_PORT = 8500
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # models.image_decoding's, without importing TensorFlow
MAX_TOP_K = 100_000  # k is an int32 on the wire; larger answers would not fit a message anyway


def model_name(text: str) -> str:
    """argparse type: a model name is one folder under the serving root, never a path."""
    from models.config_errors import ConfigError, check_name

    try:
        return check_name("--model-name", text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(error.problem) from None


def serve(args: argparse.Namespace) -> int:
    """Serves <model-base-path>/<model-name> and its search companion <model-name>-search
    (or the models of --model-config-file): the highest version unless a request names one."""
    monitoring = None if args.write_config else _monitoring(args)
    if isinstance(monitoring, int):
        return monitoring
    batching = None if args.write_config else _batching(args)
    if isinstance(batching, int):
        return batching
    from serving import config_files
    from serving.model_manager import ModelManager
    from serving.server import ServerOptions, serve_forever

    if args.write_config:
        return _write_configs(args)
    from pipeline import console

    console.log_to("runs", "serve")  # ./runs/logs/serve-<time>.log: the full library log
    logging.getLogger("serving").setLevel(logging.INFO)  # loads, version switches
    entries = (None if args.model_config_file else config_files.default_entries(
        args.model_base_path, args.model_name, args.num_versions))
    manager = ModelManager(entries or [], config_file=args.model_config_file,
                           poll_seconds=args.poll_seconds,
                           max_load_retries=args.max_load_retries,
                           allow_signature_change=args.allow_signature_change)
    batcher = None
    if batching is not None:
        from serving.batching import Batcher

        batcher = Batcher(batching, manager.metrics)
    options = ServerOptions(host=args.host, port=args.port,
                            max_message_bytes=args.max_message_mb << 20,
                            request_timeout_s=args.request_timeout_s,
                            max_workers=args.workers, max_rows=args.max_rows or None,
                            max_image_pixels=args.max_image_pixels or None)

    try:  # bound before anything loads, so a taken port fails at once
        rest_server = (_rest_api(args, manager, options, monitoring, batcher)
                       if args.rest_api_port else None)
    except OSError as error:
        print(f"cmgan serve: {error}", file=sys.stderr)
        return 1

    def on_ready(port: int) -> None:
        if batching is not None:
            print(f"server-side batching: {_describe(batching)}", flush=True)
        if rest_server is not None:  # before "serving ...": that line means every API is up
            import threading

            threading.Thread(target=rest_server.serve_forever, daemon=True,
                             name="rest-api").start()
            print(f"REST API on {args.host}:{rest_server.server_address[1]}", flush=True)
            if monitoring is not None:
                print(f"Prometheus metrics on http://{args.host}:"
                      f"{rest_server.server_address[1]}{monitoring.path}", flush=True)
        print(f"serving {', '.join(manager.model_names())} on {args.host}:{port}", flush=True)
        if args.web_port is not None:
            _start_web_page(args, port)

    serve_forever(manager, options, on_ready=on_ready, batcher=batcher)
    if rest_server is not None:
        rest_server.shutdown()
        rest_server.server_close()
    return 0


def _monitoring(args: argparse.Namespace):
    """``--monitoring-config-file``: its PrometheusSettings when enabled, else None; an exit
    status (2, with one line) when the file cannot be used or there is no REST port."""
    if not args.monitoring_config_file:
        return None
    from serving.metrics import MonitoringConfigError, read_monitoring_config

    try:
        settings = read_monitoring_config(args.monitoring_config_file)
    except MonitoringConfigError as error:
        print(f"cmgan serve: {error}", file=sys.stderr)
        return 2
    if settings.enabled and not args.rest_api_port:
        print("cmgan serve: --monitoring-config-file needs --rest-api-port: the metrics are "
              "served on the REST port, as in TF Serving", file=sys.stderr)
        return 2
    return settings if settings.enabled else None


def _batching(args: argparse.Namespace):
    """``--enable-batching [--batching-parameters-file F]``: the BatchingParameters (TF's
    defaults without a file, as TF Serving); None when off; an exit status (2, with one line)
    when the file cannot be used or is given without --enable-batching."""
    if not args.enable_batching:
        if args.batching_parameters_file:
            print("cmgan serve: --batching-parameters-file needs --enable-batching",
                  file=sys.stderr)
            return 2
        return None
    from serving.batching import (BatchingConfigError, BatchingParameters,
                                  read_batching_parameters)

    if not args.batching_parameters_file:
        return BatchingParameters()
    try:
        return read_batching_parameters(args.batching_parameters_file)
    except BatchingConfigError as error:
        print(f"cmgan serve: {error}", file=sys.stderr)
        return 2


def _describe(parameters) -> str:
    sizes = ", ".join(map(str, parameters.allowed_batch_sizes)) or "any"
    return (f"max_batch_size {parameters.max_batch_size}, batch_timeout_micros "
            f"{parameters.batch_timeout_micros}, num_batch_threads "
            f"{parameters.num_batch_threads}, max_enqueued_batches "
            f"{parameters.max_enqueued_batches}, allowed_batch_sizes {sizes}")


def _rest_api(args: argparse.Namespace, manager, options, monitoring=None, batcher=None):
    """``--rest-api-port``: TF Serving's REST API (serving/rest_api.py) over the same models,
    limits and deadline as gRPC, bound to ``--host``; served on a daemon thread once ready.
    ``monitoring``: the Prometheus page too (``--monitoring-config-file``)."""
    from serving.rest_api import RestOptions, make_server

    max_body_mb = args.rest_api_max_body_mb or args.max_message_mb
    return make_server(manager, RestOptions(host=args.host, port=args.rest_api_port,
                                            max_body_bytes=max_body_mb << 20), options,
                       monitoring=monitoring, batcher=batcher)


def _start_web_page(args: argparse.Namespace, grpc_port: int) -> None:
    """``--web-port``: the search page (serving/web.py) in this process, on a daemon thread."""
    import threading

    from serving.web import make_server
    from serving.web_backend import WebOptions

    server = make_server(WebOptions(server=f"127.0.0.1:{grpc_port}", model=args.model_name,
                                    model_base_path=args.model_base_path, host=args.host,
                                    port=args.web_port))
    host, port = server.server_address[:2]
    threading.Thread(target=server.serve_forever, daemon=True, name="web-page").start()
    print(f"search page on http://{host}:{port}/", flush=True)


def _write_configs(args: argparse.Namespace) -> int:
    """models.config and batching_parameters.txt for the stock tensorflow/serving server."""
    import os

    from serving import config_files

    os.makedirs(args.write_config, exist_ok=True)
    base = args.container_base_path.rstrip("/")
    entries = config_files.default_entries(base, args.model_name, args.num_versions)
    config_path = config_files.write_model_config(
        os.path.join(args.write_config, "models.config"), entries)
    # TF Serving batches every model of a server and refuses scalar inputs when it does, so a
    # batching server gets the encoders only; the search companion (scalar target, k) not.
    encoders_path = config_files.write_model_config(
        os.path.join(args.write_config, "encoders.config"),
        [entry for entry in entries if entry.name == args.model_name])
    batching_path = config_files.write_batching_parameters(
        os.path.join(args.write_config, "batching_parameters.txt"))
    monitoring_path = config_files.write_monitoring_config(
        os.path.join(args.write_config, "monitoring.config"))
    print(f"wrote {config_path}, {encoders_path}, {batching_path} and {monitoring_path}")
    return 0


def query(args: argparse.Namespace) -> int:
    """Prints the top-k gallery items (id, label, cosine score) for each query row."""

    from serving.client import ServingClient, format_results

    try:
        kind, value = _query_input(args)
    except (OSError, ValueError) as error:
        print(f"cmgan query: {error}", file=sys.stderr)
        return 2
    target = args.target or {"text": "image", "image": "text", "text_string": "image",
                             "image_bytes": "text"}.get(kind)
    if target is None:
        print("cmgan query: --embedding needs --target image|text", file=sys.stderr)
        return 2
    import grpc

    with ServingClient(args.server, timeout_s=args.timeout_s) as client:
        try:
            result = client.search(args.model_name, value, query_kind=kind,
                                   target=target, k=args.top_k)
        except grpc.RpcError as error:
            print(f"cmgan query: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        except ValueError as error:
            print(f"cmgan query: {error}", file=sys.stderr)
            return 2
    print(format_results(result))
    return 0


def _query_input(args: argparse.Namespace):
    """(query kind, value) from the flags. Raw queries go to the model's own in-graph
    preprocessing, except with a PyTorch encoder, whose features are computed here."""
    from pathlib import Path

    import numpy as np

    if args.text is not None or args.image is not None:
        encoder = args.client_encoder
        raw = [args.text] if args.text is not None else [Path(p).read_bytes() for p in args.image]
        if encoder:
            from components import torch_encoders  # pylint: disable=import-outside-toplevel

            torch_encoders.require(encoder)
            if args.text is None:
                from models.image_decoding import decode_and_resize  # pylint: disable=C0415

                size = torch_encoders.image_size(encoder)
                raw = [decode_and_resize(data, size).numpy() for data in raw]
            return ("text" if args.text is not None else "image",
                    torch_encoders.encode_directly(encoder, raw))
        return ("text_string", raw) if args.text is not None else ("image_bytes", raw)
    kind, path = next((k, p) for k, p in (("text", args.text_features),
                                          ("image", args.image_features),
                                          ("embedding", args.embedding)) if p)
    return kind, np.load(path)


def register(subparsers) -> None:
    """Adds ``serve`` and ``query`` to an argparse subparsers object; each sets ``func``."""
    serve_parser = subparsers.add_parser(
        "serve", help="serve pushed models over TF Serving's gRPC API (Predict, "
                      "GetModelMetadata, GetModelStatus)", description=serve.__doc__)
    serve_parser.add_argument("--model-base-path", default="serving_models",
                              help="the serving root the pipeline pushes to (default: "
                                   "%(default)s); <root>/<name>/<version>/ are served")
    serve_parser.add_argument("--model-name", default="cmgan", type=model_name,
                              help="default: %(default)s")
    serve_parser.add_argument("--model-config-file", metavar="FILE",
                              help="TF Serving ModelServerConfig text file (models, version "
                                   "policies, version_labels such as stable/canary); re-read "
                                   "when it changes")
    serve_parser.add_argument("--host", default="127.0.0.1",
                              help="address to bind (default: %(default)s, loopback only)")
    serve_parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                              help="gRPC port (default: %(default)s; 0 picks a free one)")
    serve_parser.add_argument("--rest-api-port", type=int_in(0, 65535), default=0,
                              metavar="PORT",
                              help="also serve TF Serving's REST API (/v1/models/...: predict, "
                                   "status, metadata) on this port, bound to --host; 0: off "
                                   "(default, as TF Serving)")
    serve_parser.add_argument("--rest-api-max-body-mb", type=int_in(1, 2047), default=None,
                              metavar="N",
                              help="largest REST request body; bigger ones get 413 (default: "
                                   "--max-message-mb)")
    serve_parser.add_argument("--monitoring-config-file", metavar="FILE",
                              help="TF Serving MonitoringConfig text file (prometheus_config "
                                   "{ enable: true, path: \"/monitoring/prometheus/metrics\" "
                                   "}): Prometheus metrics at that path on --rest-api-port")
    serve_parser.add_argument("--enable-batching", action="store_true",
                              help="server-side batching, as TF Serving's --enable_batching: "
                                   "concurrent Predict requests for the same model version and "
                                   "signature (gRPC and REST) run as one call")
    serve_parser.add_argument("--batching-parameters-file", metavar="FILE",
                              help="TF Serving BatchingParameters text file (max_batch_size, "
                                   "batch_timeout_micros, num_batch_threads, "
                                   "max_enqueued_batches, allowed_batch_sizes), e.g. the "
                                   "batching_parameters.txt of --write-config (default: TF's "
                                   "defaults)")
    serve_parser.add_argument("--num-versions", type=int, default=0,
                              help="keep the N highest versions loaded (default: all)")
    serve_parser.add_argument("--poll-seconds", type=float, default=2.0,
                              help="how often the base paths are scanned for new versions")
    serve_parser.add_argument("--max-message-mb", type=int, default=64,
                              help="largest request/response; bigger ones get "
                                   "RESOURCE_EXHAUSTED (default: %(default)s)")
    serve_parser.add_argument("--request-timeout-s", type=float, default=30.0,
                              help="per-request deadline, capped by the client's own")
    serve_parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    serve_parser.add_argument("--max-load-retries", type=int, default=5, metavar="N",
                              help="retries (with doubling delays up to 60 s) of a version "
                                   "that fails to load before it is reported END "
                                   "(default: %(default)s, as TF Serving)")
    serve_parser.add_argument("--allow-signature-change", action="store_true",
                              help="let a new version whose signatures (names, dtypes, shapes) "
                                   "differ from the served version's replace it; by default it "
                                   "is refused and reported END")
    serve_parser.add_argument("--max-rows", type=int, default=0, metavar="N",
                              help="rows per Predict request; more get INVALID_ARGUMENT "
                                   "(default: one 4 KB row per 4 KB of --max-message-mb)")
    serve_parser.add_argument("--max-image-pixels", type=int,
                              default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                              help="largest width*height of a JPEG/PNG input, read from its "
                                   "header before decoding (default: %(default)s; 0: no limit)")
    serve_parser.add_argument("--web-port", type=int, metavar="PORT",
                              help="also serve the search page (as `cmgan web`) on this port "
                                   "(0 picks a free one)")
    serve_parser.add_argument("--write-config", metavar="DIR",
                              help="instead of serving, write models.config, "
                                   "encoders.config (without the search companion, for a "
                                   "batching server), batching_parameters.txt and "
                                   "monitoring.config for tensorflow/serving into DIR")
    serve_parser.add_argument("--container-base-path", default="/models",
                              help="with --write-config: where the serving root is mounted in "
                                   "the container (default: %(default)s)")
    serve_parser.set_defaults(func=serve)

    query_parser = subparsers.add_parser(
        "query", help="top-k cross-modal retrieval against a running server",
        description=query.__doc__ + " Raw --text and --image queries are preprocessed by the "
                                    "served model itself (models trained with the cnn, keras: or "
                                    "kim_cnn encoders); for a model trained with a torch: encoder "
                                    "pass --client-encoder and the features are computed here.")
    query_parser.add_argument("--server", default=f"127.0.0.1:{DEFAULT_PORT}",
                              help="host:port (default: %(default)s)")
    source = query_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-features", metavar="FILE.npy",
                        help="text feature vector(s), [d_txt] or [N, d_txt]")
    source.add_argument("--image-features", metavar="FILE.npy",
                        help="image feature vector(s), [d_img] or [N, d_img]")
    source.add_argument("--embedding", metavar="FILE.npy",
                        help="already-encoded common vector(s), [common_dim] or [N, common_dim]")
    source.add_argument("--text", help="a sentence (search_text_string)")
    source.add_argument("--image", nargs="+", metavar="PATH",
                        help="JPEG/PNG file(s) (search_image_bytes)")
    query_parser.add_argument("--client-encoder", metavar="torch:NAME",
                              help="the model's PyTorch encoder (torch:minilm, "
                                   "torch:efficientnet-lite0): encode --text/--image here first")
    query_parser.add_argument("--target", choices=("image", "text"),
                              help="gallery modality to search (default: the other one)")
    query_parser.add_argument("--top-k", type=int_in(1, MAX_TOP_K), default=10,
                              help=f"1 to {MAX_TOP_K} (default: %(default)s)")
    query_parser.add_argument("--model-name", default="cmgan",
                              help="encoder model name; <name>-search answers (default: "
                                   "%(default)s)")
    query_parser.add_argument("--timeout-s", type=float, default=10.0, help="request deadline")
    query_parser.set_defaults(func=query)

