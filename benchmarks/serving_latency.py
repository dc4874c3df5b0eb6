"""Serving latency: p50/p99 and requests/s of encode and search over gRPC, and the floor.

Builds a synthetic encoder SavedModel (the Wikipedia model's shapes: 128-d image, 10-d text,
1024-d common space) and search companions with synthetic galleries of 10k and 100k items, serves
them with ``cmgan serve`` in its own process on 127.0.0.1, and drives it with 1 and 8 concurrent
clients (one request = one query row). The floor is the same signature called in-process on the
loaded SavedModel. ``gallery_ann``: a 1M-item gallery (``--ann-size``) searched through the
server's approximate index with one client (``approximate_gallery_cell``; ``--only-ann`` runs
just that cell, which takes minutes to build). With 10k in ``--sizes``, ``batching_cells``: 8
clients on search over 10k and on encode with server-side batching off and on
(``search10k_8c_rps``, ``search10k_8c_p99_ms`` and their ``_batching`` twins), against one
in-process thread (``inprocess_single_query_rps``, ``ratio_8c_to_inprocess``). Load averages
(1, 5, 15 min) at the start and end sit beside the figures. Prints one JSON line.

    .venv/bin/python benchmarks/serving_latency.py [--requests 400] [--sizes 10000 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.metrics import l2_normalise  # noqa: E402
from serving import config_files  # noqa: E402
from serving.client import ServingClient  # noqa: E402
from serving.gallery import GalleryPart  # noqa: E402
from serving.search_model import export_search_model  # noqa: E402

IMAGE_DIM, TEXT_DIM, COMMON_DIM = 128, 10, 1024
K_RESULTS = 10
ENCODER = "bench"


class SyntheticEncoder(tf.Module):
    """Stands in for CM-GAN: a 2-layer MLP per modality, L2-normalised, same signatures."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.weights = {
            name: [tf.Variable(rng.normal(size=shape).astype(np.float32) / np.sqrt(shape[0]))
                   for shape in ((dim, 1024), (1024, COMMON_DIM))]
            for name, dim in (("image", IMAGE_DIM), ("text", TEXT_DIM))}

    def _encode(self, name, x):
        hidden = tf.nn.relu(x @ self.weights[name][0])
        return {"embedding": tf.math.l2_normalize(hidden @ self.weights[name][1], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_DIM], tf.float32, name="image")])
    def encode_image(self, image):
        return self._encode("image", image)

    @tf.function(input_signature=[tf.TensorSpec([None, TEXT_DIM], tf.float32, name="text")])
    def encode_text(self, text):
        return self._encode("text", text)


def build_models(root: Path, sizes: list[int]) -> list[config_files.ModelEntry]:
    encoder_dir = root / ENCODER / "1"
    module = SyntheticEncoder()
    tf.saved_model.save(module, str(encoder_dir), signatures={
        "encode_image": module.encode_image, "encode_text": module.encode_text})
    entries = [config_files.ModelEntry(ENCODER, str(root / ENCODER))]
    rng = np.random.default_rng(1)
    encoder = tf.saved_model.load(str(encoder_dir))
    for size in sizes:
        part = lambda n: GalleryPart(
            l2_normalise(rng.standard_normal((n, COMMON_DIM), dtype=np.float32)),
            np.array([f"item-{i}" for i in range(n)]), rng.integers(0, 10, n))
        name = config_files.search_model_name(f"g{size}")
        export_search_model(str(encoder_dir), {"image": part(size), "text": part(1)},
                            str(root / name / "1"), encoder=encoder)
        entries.append(config_files.ModelEntry(name, str(root / name)))
    return entries


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def drive(target: str, call, clients: int, requests: int) -> dict[str, float]:
    """``requests`` calls in total, spread over ``clients`` threads, each with its own channel."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker():
        with ServingClient(target, timeout_s=30) as client:
            for _ in range(5):  # warm the channel and the signature cache
                call(client)
            mine = []
            for _ in range(requests // clients):
                started = time.perf_counter()
                call(client)
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {**percentiles(latencies), "requests_per_s": round(len(latencies) / wall, 1)}


def floor(fn, inputs: dict, repeats: int) -> dict[str, float]:
    """One in-process thread calling the signature directly: latencies and single queries/s."""
    for _ in range(10):
        fn(**inputs)
    latencies = []
    first = time.perf_counter()
    for _ in range(repeats):
        started = time.perf_counter()
        fn(**inputs)
        latencies.append(time.perf_counter() - started)
    return {**percentiles(latencies),
            "requests_per_s": round(repeats / (time.perf_counter() - first), 1)}


def start_server(config_file: str, *extra_flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model-config-file",
         config_file, "--port", "0", "--max-message-mb", "256", *extra_flags],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("serving "):
            return process, line.rsplit(" on ", 1)[1].strip()
    raise RuntimeError("the server did not start")


# --------------------------------------------------------------------------- batching
def batching_cells(root: Path, entries: list[config_files.ModelEntry], results: dict,
                   query_text: np.ndarray, requests: int, clients: int = 8,
                   size: int = 10_000) -> dict:
    """Search over ``size`` items and encode, ``clients`` concurrent clients of one query each,
    with server-side batching off (``results``' figures of the plain server) and on (a second
    ``cmgan serve --enable-batching`` reading the batching_parameters.txt ``cmgan serve
    --write-config`` writes), against one in-process thread answering single queries
    (``results``' in-process floors). Keys ``*_batching`` are with batching;
    ``ratio_8c_to_inprocess`` is search requests/s with batching over the in-process rate
    (goal >= 2.0: merged queries are one matrix product)."""
    name = f"g{size}"
    search_name = config_files.search_model_name(name)
    plain = {"search": results["search"][f"{size}_{clients}_clients"],
             "encode": results["encode"][f"{clients}_clients"]}
    cells = {
        "inprocess_single_query_rps": results["in_process_floor"][f"search_{size}"][
            "requests_per_s"],
        "inprocess_single_encode_rps": results["in_process_floor"]["encode"]["requests_per_s"]}
    parameters_file = config_files.write_batching_parameters(
        str(root / "batching_parameters.txt"))
    config_file = config_files.write_model_config(  # the encoder and this gallery only
        str(root / "batching_models.config"),
        [e for e in entries if e.name in (ENCODER, search_name)])
    process, batching_target = start_server(config_file, "--enable-batching",
                                            "--batching-parameters-file", parameters_file)
    try:
        batched = {"search": drive(batching_target, lambda c: c.search(
            name, query_text, query_kind="text", target="image", k=K_RESULTS), clients,
            requests), "encode": drive(batching_target, lambda c: c.encode(
                ENCODER, "text", query_text), clients, requests)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    for suffix, measured in (("", plain), ("_batching", batched)):
        search, encode = measured["search"], measured["encode"]
        cells[f"search10k_8c_rps{suffix}"] = search["requests_per_s"]
        cells[f"search10k_8c_p99_ms{suffix}"] = search["p99_ms"]
        cells[f"encode_8c_rps{suffix}"] = encode["requests_per_s"]
        cells[f"encode_8c_p99_ms{suffix}"] = encode["p99_ms"]
    single = cells["inprocess_single_query_rps"]
    cells["ratio_8c_to_inprocess"] = round(cells["search10k_8c_rps_batching"] / single, 2)
    cells["ratio_8c_to_inprocess_no_batching"] = round(cells["search10k_8c_rps"] / single, 2)
    cells["encode_ratio_8c_to_inprocess"] = round(
        cells["encode_8c_rps_batching"] / cells["inprocess_single_encode_rps"], 2)
    cells["batching_parameters"] = Path(parameters_file).read_text().strip().splitlines()
    return cells


# --------------------------------------------------------------------------- large gallery
def server_memory_gib(pid: int) -> dict[str, float]:
    """Resident memory of a process now (VmRSS) and at its peak (VmHWM), in GiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {key: round(int(fields[name].split()[0]) / 2 ** 20, 2)
            for key, name in (("rss_gib", "VmRSS"), ("peak_rss_gib", "VmHWM"))}


def approximate_gallery_cell(size: int, requests: int, nprobe: int) -> dict:
    """A ``size``-item image gallery (goal: 1M) through ``cmgan serve`` with one client: the
    search servable carries a faiss index (serving/approximate_index.py), so the server answers
    ``search_*`` from it (serving/ann_search.py). The gallery is ann_recall.py's clustered
    1024-d draw (uniform random unit vectors have no neighbourhoods for any index to find);
    queries are fresh draws. Reports p50/p99 of ``search_embedding`` (goal p99 < 50 ms) and of
    ``search_text`` (the server encodes, then searches), recall@10 of the served answers against
    exact search in numpy (goal >= 0.95), the recall recorded at export, server RSS, and how
    long building and loading took."""
    from benchmarks.ann_recall import clustered_embeddings
    from serving.approximate_index import exact_search, read_meta, recall_at_k

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        gallery, labels = clustered_embeddings(size, COMMON_DIM, seed=size)
        queries, _ = clustered_embeddings(requests, COMMON_DIM, seed=1)
        text_gallery, text_labels = clustered_embeddings(100, COMMON_DIM, seed=2)
        encoder_dir = root / ENCODER / "1"
        module = SyntheticEncoder()
        tf.saved_model.save(module, str(encoder_dir), signatures={
            "encode_image": module.encode_image, "encode_text": module.encode_text})
        name = config_files.search_model_name(f"g{size}")
        export_dir = str(root / name / "1")
        export_search_model(
            str(encoder_dir),
            {"image": GalleryPart(gallery, np.array([f"item-{i}" for i in range(size)]), labels),
             "text": GalleryPart(text_gallery, np.array([f"t{i}" for i in range(100)]),
                                 text_labels)},
            export_dir, ann_min_items=size, ann_nprobe=nprobe)
        timings["build_s"] = round(time.perf_counter() - started, 1)
        meta = read_meta(export_dir, "image")
        config_file = config_files.write_model_config(str(root / "models.config"), [
            config_files.ModelEntry(ENCODER, str(root / ENCODER)),
            config_files.ModelEntry(name, str(root / name))])
        started = time.perf_counter()
        process, target = start_server(config_file)
        timings["server_start_s"] = round(time.perf_counter() - started, 1)
        try:
            query_text = np.random.default_rng(3).normal(size=(requests, TEXT_DIM)).astype(
                np.float32)
            with ServingClient(target, timeout_s=60) as client:
                for row in queries[:5]:  # warm the channel
                    client.search(f"g{size}", row, query_kind="embedding", target="image")
                latencies, found = [], []
                for row in queries:
                    started = time.perf_counter()
                    result = client.search(f"g{size}", row, query_kind="embedding",
                                           target="image", k=K_RESULTS)
                    latencies.append(time.perf_counter() - started)
                    found.append(result.ids[0])
                text_latencies = []
                for row in query_text:
                    started = time.perf_counter()
                    client.search(f"g{size}", row, query_kind="text", target="image",
                                  k=K_RESULTS)
                    text_latencies.append(time.perf_counter() - started)
            memory = server_memory_gib(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    exact, _ = exact_search(gallery, queries, K_RESULTS)
    recall = recall_at_k(np.array([[int(i.split("-")[1]) for i in row] for row in found]),
                         exact, K_RESULTS)
    return {"gallery_items": size, "dim": COMMON_DIM, "clients": 1, "requests": requests,
            "index": meta["kind"], "nprobe": meta["nprobe"],
            "search_embedding": percentiles(latencies), "search_text": percentiles(
                text_latencies), "recall_at_10": round(recall, 4),
            "recall_at_10_recorded_at_export": meta.get("recall_at_10"),
            "server": memory, **timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--ann-size", type=int, default=1_000_000,
                        help="items of the approximate-index gallery cell (0: skip it)")
    parser.add_argument("--ann-nprobe", type=int, default=32)
    parser.add_argument("--only-ann", action="store_true",
                        help="run only the approximate-index gallery cell")
    args = parser.parse_args()
    if args.only_ann:
        print(json.dumps({"cpu_count": os.cpu_count(), "gallery_ann": approximate_gallery_cell(
            args.ann_size, args.requests, args.ann_nprobe)}))
        return 0
    query_text = np.random.default_rng(2).normal(size=(1, TEXT_DIM)).astype(np.float32)
    results = {"cpu_count": os.cpu_count(), "requests_per_measurement": args.requests,
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
               "encode": {}, "search": {}, "in_process_floor": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entries = build_models(root, args.sizes)
        config_file = config_files.write_model_config(str(root / "models.config"), entries)
        local = {e.name: tf.saved_model.load(os.path.join(e.base_path, "1")) for e in entries}
        encode_inputs = {"text": tf.constant(query_text)}
        results["in_process_floor"]["encode"] = floor(
            local[ENCODER].signatures["encode_text"], encode_inputs, args.requests)
        process, target = start_server(config_file)
        try:
            for clients in (1, 8):
                results["encode"][f"{clients}_clients"] = drive(
                    target, lambda c: c.encode(ENCODER, "text", query_text), clients,
                    args.requests)
            for size in args.sizes:
                name = f"g{size}"
                search_fn = local[config_files.search_model_name(name)].signatures["search_text"]
                results["in_process_floor"][f"search_{size}"] = floor(
                    search_fn, {**encode_inputs, "target": tf.constant("image"),
                                "k": tf.constant(K_RESULTS)}, args.requests)
                for clients in (1, 8):
                    results["search"][f"{size}_{clients}_clients"] = drive(
                        target, lambda c, n=name: c.search(n, query_text, query_kind="text",
                                                           target="image", k=K_RESULTS),
                        clients, args.requests)
            if 10_000 in args.sizes:  # server-side batching off and on, 8 clients
                results.update(batching_cells(root, entries, results, query_text,
                                              args.requests))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    if args.ann_size:
        results["gallery_ann"] = approximate_gallery_cell(args.ann_size, args.requests,
                                                          args.ann_nprobe)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
