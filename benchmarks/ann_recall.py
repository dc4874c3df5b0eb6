"""Approximate index (serving/approximate_index.py) against exact search: recall@10, build
time, single-query latency.

Synthetic gallery, clustered like trained embeddings: 100 class centres on the unit sphere, each
item its centre plus a 16-d latent Gaussian spread mapped into the common space plus a little
isotropic noise, L2-normalised (1024-d by default, the CM-GAN common space). Queries are fresh
draws from the same distribution. For each gallery size: recall@10 of the IVF index against
``exact_search`` over ``--queries`` queries for several nprobe values, and p50/p99 latency of
one query at a time (approximate: ``ApproximateIndex.search``; exact: ``exact_search``, the
numpy reference of the in-graph matmul + top_k). Prints one JSON line.

    .venv/bin/python benchmarks/ann_recall.py [--sizes 100000 1000000] [--dim 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.metrics import l2_normalise  # noqa: E402
from serving.approximate_index import (ApproximateIndex, exact_search,  # noqa: E402
                                       recall_at_k)

K = 10
CLUSTERS, LATENT, RADIUS, NOISE = 100, 64, 1.0, 0.2


def clustered_embeddings(num: int, dim: int, seed: int, chunk: int = 100_000):
    """[num, dim] float32 L2-normalised embeddings and int64 labels (see the module docstring);
    the centres and the latent map depend on ``dim`` only, so galleries and queries share them."""
    structure = np.random.default_rng(12345)
    centres = l2_normalise(structure.standard_normal((CLUSTERS, dim), dtype=np.float32))
    # a cluster's spread (norm ~RADIUS) is about the distance between centres (~1.4), so
    # clusters overlap as real classes do; NOISE is the norm of the isotropic part
    latent_map = structure.standard_normal((LATENT, dim), dtype=np.float32) * (
        RADIUS / np.sqrt(LATENT * dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLUSTERS, num)
    out = np.empty((num, dim), np.float32)
    for start in range(0, num, chunk):
        rows = slice(start, min(start + chunk, num))
        n = rows.stop - rows.start
        x = centres[labels[rows]] + rng.standard_normal((n, LATENT), dtype=np.float32) @ latent_map
        x += (NOISE / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
        out[rows] = l2_normalise(x)
    return out, labels.astype(np.int64)


def percentiles(latencies_s) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "n": len(ms)}


def single_query_latency(fn, queries: np.ndarray, repeats: int) -> dict[str, float]:
    for q in queries[:3]:  # warm caches and threads
        fn(q[None])
    latencies = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(queries[i % len(queries)][None])
        latencies.append(time.perf_counter() - started)
    return percentiles(latencies)


def run_size(size: int, dim: int, args) -> dict:
    started = time.perf_counter()
    gallery, labels = clustered_embeddings(size, dim, seed=size)
    queries, _ = clustered_embeddings(args.queries, dim, seed=1)
    generate_s = time.perf_counter() - started
    ids = np.array([f"item-{i}" for i in range(size)])

    started = time.perf_counter()
    index = ApproximateIndex.build(gallery, ids, labels)
    build_s = time.perf_counter() - started

    started = time.perf_counter()
    exact, _ = exact_search(gallery, queries, K)
    exact_batch_s = time.perf_counter() - started

    sweep = {}
    for nprobe in args.nprobe:
        started = time.perf_counter()
        approx, _ = index.search_indices(queries, K, nprobe=nprobe)
        batch_s = time.perf_counter() - started
        sweep[str(nprobe)] = {
            "recall_at_10": round(recall_at_k(approx, exact, K), 4),
            "batch_ms_per_query": round(batch_s * 1e3 / len(queries), 3),
            "single_query": single_query_latency(
                lambda q, p=nprobe: index.search(q, K, nprobe=p), queries, args.repeats)}
    exact_repeats = max(10, min(args.repeats, int(args.repeats * 100_000 / size)))
    result = {
        "n": size, "dim": dim, "index": index.meta["kind"], "nlist": index.nlist,
        "train_size": index.meta["train_size"], "generate_s": round(generate_s, 1),
        "build_s": round(build_s, 1),
        "approx": sweep,
        "exact": {"batch_ms_per_query": round(exact_batch_s * 1e3 / len(queries), 3),
                  "single_query": single_query_latency(
                      lambda q: exact_search(gallery, q, K), queries, exact_repeats)},
    }
    del index, gallery
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000, help="for recall@10")
    parser.add_argument("--repeats", type=int, default=200, help="single-query timings")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    args = parser.parse_args()
    import faiss

    results = {"cpu_count": os.cpu_count(), "faiss": faiss.__version__, "k": K,
               "queries": args.queries,
               "data": f"{CLUSTERS} clusters, {LATENT}-d latent spread, L2-normalised",
               "sizes": [run_size(size, args.dim, args) for size in args.sizes],
               "peak_rss_gib": round(
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
