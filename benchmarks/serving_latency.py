"""Serving latency: p50/p99 and requests/s of encode and search over gRPC, and the floor.

Builds a synthetic encoder SavedModel (the Wikipedia model's shapes: 128-d image, 10-d text,
1024-d common space) and search companions with synthetic galleries of 10k and 100k items, serves
them with ``cmgan serve`` in its own process on 127.0.0.1, and drives it with 1 and 8 concurrent
clients (one request = one query row). The floor is the same signature called in-process on the
loaded SavedModel. Prints one JSON line.

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
    for _ in range(10):
        fn(**inputs)
    latencies = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(**inputs)
        latencies.append(time.perf_counter() - started)
    return percentiles(latencies)


def start_server(config_file: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model-config-file",
         config_file, "--port", "0", "--max-message-mb", "256"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("serving "):
            return process, line.rsplit(" on ", 1)[1].strip()
    raise RuntimeError("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    query_text = np.random.default_rng(2).normal(size=(1, TEXT_DIM)).astype(np.float32)
    results = {"cpu_count": os.cpu_count(), "requests_per_measurement": args.requests,
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
                                "k": tf.constant(10)}, args.requests)
                for clients in (1, 8):
                    results["search"][f"{size}_{clients}_clients"] = drive(
                        target, lambda c, n=name: c.search(n, query_text, query_kind="text",
                                                           target="image", k=10),
                        clients, args.requests)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
