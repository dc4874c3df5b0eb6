"""Raw image preprocessing throughput: RawExampleGen's Beam pipeline against a direct loop.

Generates ``--num-images`` random-texture 128x128 JPEGs in a raw pair folder, then measures
images/s of

- beam_in_memory: RawExampleGen's executor (read, Pillow check, decode + resize, the keras
  encoder through RunInference, TFRecord writing) on the DirectRunner, in_memory mode;
- beam_multi_processing: the same with ``--direct_running_mode=multi_processing
  --direct_num_workers=2``;
- direct: the same encoder called in a plain batched loop over the same files, read and decode
  included (model construction included too, as each Beam run builds its model).

Overhead = direct images/s / Beam images/s (1.0 = no overhead). Each Beam run also pays fixed
costs (TFX's ephemeral package build, pipeline start, worker start-up and model build per
worker), so every mode also runs on ``--warmup-images`` images first; the ``*_marginal`` figures
use the difference of the two runs, i.e. the steady-state cost per image. Prints one JSON line.

    .venv/bin/python benchmarks/preprocess_throughput.py [--num-images 512]
        [--encoder keras:MobileNetV3Small] [--image-size 96]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_jpeg_folder(folder: Path, num_images: int, side: int = 128, seed: int = 0) -> Path:
    """Smooth random colour fields plus noise (JPEG-compressible like photos), 4 classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    lines = ["id,image,text,label,split"]
    for i in range(num_images):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.BILINEAR)
        pixels = np.clip(np.asarray(image, np.int16) + rng.integers(-20, 21, (side, side, 3)),
                         0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.jpg", format="JPEG", quality=90)
        lines.append(f"b{i},img/{i}.jpg,caption {i},c{i % 4},{('train', 'val', 'test')[i % 3]}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder


def run_beam(folder: Path, work: Path, encoder: str, image_size: int, beam_args: list[str]):
    from tfx.types import standard_artifacts

    from components.raw_example_gen.component import QuarantinedRecords
    from components.raw_example_gen.executor import Executor

    examples, quarantine = standard_artifacts.Examples(), QuarantinedRecords()
    examples.uri, quarantine.uri = str(work / "examples"), str(work / "quarantine")
    os.makedirs(examples.uri)
    os.makedirs(quarantine.uri)
    properties = dict(dataset="raw", data_dir=str(folder), seed=0, val_fraction=0.15,
                      image_encoder=encoder, image_encoder_weights="none",
                      image_size=image_size, text_encoder="kim_cnn", max_quarantine_fraction=0.0)
    start = time.perf_counter()
    Executor(Executor.Context(beam_pipeline_args=beam_args, tmp_dir=str(work / "tmp"),
                              unique_id="0")).Do({}, {"examples": [examples],
                                                      "quarantine": [quarantine]}, properties)
    elapsed = time.perf_counter() - start
    accepted = json.loads((Path(quarantine.uri) / "summary.json").read_text())["accepted"]
    return accepted, elapsed


def run_direct(folder: Path, num_images: int, encoder: str, image_size: int,
               batch_size: int = 32):
    import tensorflow as tf

    from models.keras_image_encoders import build_keras_encoder
    from models.image_decoding import decode_and_resize

    start = time.perf_counter()
    model = build_keras_encoder(encoder, "none", image_size, seed=0)
    built = time.perf_counter()
    decode = tf.function(lambda data: decode_and_resize(data, image_size),
                         input_signature=[tf.TensorSpec([], tf.string)])
    features = []
    for first in range(0, num_images, batch_size):
        batch = [decode(tf.constant((folder / "img" / f"{i}.jpg").read_bytes())).numpy()
                 for i in range(first, min(first + batch_size, num_images))]
        features.append(model.encode(np.stack(batch), batch_size=batch_size))
    end = time.perf_counter()
    assert sum(len(f) for f in features) == num_images
    return end - start, built - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--encoder", default="keras:MobileNetV3Small")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--warmup-images", type=int, default=32)
    args = parser.parse_args(argv)
    n = args.num_images
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_jpeg_folder(tmp / "data", n)
        small = write_jpeg_folder(tmp / "small", args.warmup_images, seed=1)
        direct_s, build_s = run_direct(folder, n, args.encoder, args.image_size)
        small_direct_s, _ = run_direct(small, args.warmup_images, args.encoder, args.image_size)
        results, fixed = {"direct": direct_s}, {"direct": small_direct_s}
        for mode, beam_args in (
                ("beam_in_memory", ["--direct_running_mode=in_memory",
                                    "--direct_num_workers=1"]),
                ("beam_multi_processing", ["--direct_running_mode=multi_processing",
                                           "--direct_num_workers=2"])):
            accepted, elapsed = run_beam(folder, tmp / mode, args.encoder, args.image_size,
                                         beam_args)
            assert accepted == n, (mode, accepted)
            results[mode] = elapsed
            _, fixed[mode] = run_beam(small, tmp / f"{mode}-small", args.encoder,
                                      args.image_size, beam_args)
    direct_rate = n / direct_s
    extra = n - args.warmup_images
    # None when the small run was not faster (load from other processes swamps the difference)
    marginal = {mode: extra / (s - fixed[mode]) if s > fixed[mode] else None
                for mode, s in results.items()}
    print(json.dumps({
        "benchmark": "preprocess_throughput", "num_images": n, "source_side": 128,
        "encoder": args.encoder, "weights": "none", "image_size": args.image_size,
        "cpu_count": os.cpu_count(),
        "direct_images_per_s": round(direct_rate, 1),
        "direct_model_build_s": round(build_s, 2),
        **{f"{mode}_images_per_s": round(n / s, 1) for mode, s in results.items()},
        **{f"{mode}_overhead": round((s / n) * direct_rate, 2) for mode, s in results.items()
           if mode != "direct"},
        **{f"{mode}_run_s": round(s, 2) for mode, s in results.items()},
        **{f"{mode}_run_s_{args.warmup_images}_images": round(s, 2) for mode, s in fixed.items()},
        **{f"{mode}_marginal_images_per_s": r and round(r, 1) for mode, r in marginal.items()},
        **{f"{mode}_marginal_overhead": (round(marginal["direct"] / r, 2)
                                         if r and marginal["direct"] else None)
           for mode, r in marginal.items() if mode != "direct"},
    }))


if __name__ == "__main__":
    main()
