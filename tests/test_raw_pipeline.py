"""The embedded raw demo end to end: ``cmgan run`` with its defaults (image bytes and captions
through RawExampleGen, Transform's tokenizer and vocabulary, the cnn + kim_cnn encoders), then
the pushed model over gRPC answering encode_image_bytes / encode_text_string, as served by
``cmgan serve`` and queried by ``cmgan query``."""
from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_HPARAMS, TINY_RAW_HPARAMS, serving_process
from models.preprocessing import ID_KEY, IMAGE_KEY, TEXT_KEY

REPO = Path(__file__).resolve().parents[1]
# Two ensemble members (models/ensemble.py), so the served graph's equality with the Trainer's
# Keras model below holds for a seed ensemble of pixel and token encoders too.
TINY_RAW = [f"{k}={v}" for k, v in {**TINY_HPARAMS, **TINY_RAW_HPARAMS,
                                     "ensemble_members": 2}.items()]


def cmgan(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw_demo")
    flags = [f"--hparam={h}" for h in TINY_RAW]
    done = cmgan("run", "--pipeline-root", str(base / "root"),
                 "--serving-root", str(base / "serving"), *flags)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return base, done.stdout


def _one(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    assert found, pattern
    return found[-1]


def test_demo_run_reads_raw_bytes_and_accounts_for_every_record(demo_run):
    base, stdout = demo_run
    assert "CM-GAN (candidate)" in stdout and "pushed model:" in stdout
    summary = json.loads(Path(_one(f"{base}/root/RawExampleGen/quarantine/*/summary.json"))
                         .read_text())
    assert summary["records_in"] == summary["accepted"] + summary["quarantined"]
    assert summary["quarantined"] == 0 and summary["accepted"] == 8 * (120 + 30 + 40)
    examples = _one(f"{base}/root/RawExampleGen/examples/*")
    record = next(iter(tf.data.TFRecordDataset(glob.glob(f"{examples}/Split-val/*"),
                                               compression_type="GZIP")))
    example = tf.train.Example.FromString(record.numpy())
    assert len(example.features.feature[IMAGE_KEY].bytes_list.value[0]) == 32 * 32 * 3
    assert example.features.feature[TEXT_KEY].bytes_list.value[0].decode().strip()
    # Transform's vocabulary is computed on train only and kept with the graph.
    vocab = _one(f"{base}/root/Transform/transform_graph/*/transform_fn/assets/text_tokens")
    assert 10 < len(Path(vocab).read_text().split()) <= 300


def _demo_folder(base) -> Path:
    return Path(_one(f"{base}/root/RawExampleGen/examples/*/raw_demo"))


def test_served_model_takes_image_bytes_and_text_strings_like_training_did(demo_run):
    from serving.client import ServingClient

    base, _ = demo_run
    folder = _demo_folder(base)
    with open(folder / "pairs.csv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    model_run = _one(f"{base}/root/Trainer/model_run/*")
    reference = np.load(os.path.join(model_run, "reference_embeddings.npz"))
    ids = [str(i) for i in reference["ids"][:6]]
    with serving_process("--model-base-path", str(base / "serving")) as address, \
            ServingClient(address) as client:
        client.wait_until_ready("cmgan")
        signatures = client.signatures("cmgan")
        assert {"encode_image_bytes", "encode_text_string", "encode_image",
                "encode_text"} <= set(signatures)
        images = [(folder / rows[i]["image"]).read_bytes() for i in ids]
        from_bytes, _ = client.predict("cmgan", "encode_image_bytes",
                                       {"image_bytes": np.array(images, object)})
        texts = np.array([rows[i]["text"].encode() for i in ids], object)
        from_strings, _ = client.predict("cmgan", "encode_text_string", {"text": texts})
        # The Keras model on Transform's outputs (the Trainer's reference) = the served graph on
        # raw PNG bytes and raw captions: Beam's decoding and Transform's tokenizer run in-graph.
        np.testing.assert_allclose(from_bytes["embedding"], reference["image_embedding"][:6],
                                   atol=1e-4)
        np.testing.assert_allclose(from_strings["embedding"], reference["text_embedding"][:6],
                                   atol=1e-4)
        # Both members' unit vectors, side by side.
        assert from_bytes["embedding"].shape == (6, 2 * TINY_HPARAMS["common_dim"])
        result = client.search("cmgan", rows[ids[0]]["text"], query_kind="text_string",
                               target="image", k=5)
        assert result.ids.shape == (1, 5) and np.all(np.diff(result.scores[0]) <= 1e-6)
        with pytest.raises(grpc.RpcError) as error:
            client.predict("cmgan", "encode_image_bytes",
                           {"image_bytes": np.array([b"GIF89a not a png"], object)})
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "JPEG or PNG" in error.value.details()
        # Still serving after the bad request; the command line takes raw queries too.
        text_query = cmgan("query", "--server", address, "--text", rows[ids[1]]["text"],
                           "--top-k", "3", timeout=120)
        assert text_query.returncode == 0, text_query.stderr[-2000:]
        image_query = cmgan("query", "--server", address, "--image",
                            str(folder / rows[ids[1]]["image"]), "--top-k", "3", timeout=120)
        assert image_query.returncode == 0, image_query.stderr[-2000:]
        for output in (text_query.stdout, image_query.stdout):
            assert len([line for line in output.splitlines() if line.strip()[:1].isdigit()]) == 3


def test_search_companion_describes_its_gallery_with_thumbnails_and_snippets(demo_run):
    from PIL import Image
    import base64
    import io

    from serving.gallery import read_gallery_items

    base, _ = demo_run
    version = _one(f"{base}/serving/cmgan-search/*")
    items = read_gallery_items(version)
    assert len(items) == 2 * 8 * 40  # test split, both modalities
    image_item = next(i for i in items if i["modality"] == IMAGE_KEY)
    text_item = next(i for i in items if i["modality"] == TEXT_KEY)
    assert Image.open(io.BytesIO(base64.b64decode(image_item["thumbnail"]))).size == (32, 32)
    assert text_item["text"].strip() and text_item["class_name"]
    assert {ID_KEY, "label", "class_name"} <= set(image_item)


def test_encoder_settings_default_by_dataset_and_reach_every_stage(tmp_path):
    from pipeline.config import DataConfig, PipelineConfig, TrainingConfig
    from pipeline.pipeline import create_pipeline_from_config

    assert DataConfig(dataset="demo").encoders() == ("cnn", "kim_cnn")
    assert DataConfig(dataset="wikipedia", data_dir="w").encoders() == ("features", "features")
    wiki_raw = DataConfig(dataset="wikipedia", data_dir="w", text_encoder="kim_cnn")
    assert wiki_raw.is_raw and not DataConfig(dataset="wikipedia", data_dir="w").is_raw
    config = PipelineConfig(pipeline_root=str(tmp_path / "root"), data=wiki_raw).resolved()
    hparams = config.cmgan_hparams()
    assert (hparams.image_encoder, hparams.text_encoder) == ("features", "kim_cnn")
    minilm = PipelineConfig(data=DataConfig(dataset="wikipedia", data_dir="w",
                                            text_encoder="torch:minilm"))
    assert minilm.cmgan_hparams().text_encoder == "features"  # Beam computed the features
    components = {c.id: c for c in create_pipeline_from_config(config).components}
    example_gen = components["RawExampleGen"]
    assert example_gen.exec_properties["dataset"] == "wikipedia_raw"
    assert example_gen.exec_properties["text_encoder"] == "kim_cnn"
    assert json.loads(components["Transform"].exec_properties["custom_config"])[
        "text_encoder"] == "kim_cnn"
    # The model's image_size is the size Beam resizes to, however it was set.
    demo = PipelineConfig(pipeline_root=str(tmp_path / "demo"),
                          training=TrainingConfig(hparams={"image_size": 24})).resolved()
    demo_gen = {c.id: c for c in create_pipeline_from_config(demo).components}["RawExampleGen"]
    assert demo_gen.exec_properties["image_size"] == 24 == demo.cmgan_hparams().image_size


@pytest.mark.parametrize("fields, message", [
    (dict(dataset="demo", image_encoder="features"), "raw images and texts"),
    (dict(dataset="wikipedia", data_dir="w", image_encoder="cnn"), "SIFT features"),
    (dict(dataset="features", data_dir="f", text_encoder="kim_cnn"), "holds features"),
    (dict(dataset="raw", data_dir="r", image_encoder="keras:"), "image_encoder must be"),
    (dict(dataset="raw", data_dir="r", text_encoder="bert"), "text_encoder must be"),
    (dict(dataset="raw", data_dir="r", max_quarantine_fraction=1.5), "max_quarantine_fraction"),
])
def test_encoder_settings_that_cannot_work_are_refused(fields, message):
    from pipeline.config import DataConfig

    with pytest.raises(ValueError, match=message):
        DataConfig(**fields)


def test_keras_image_encoder_runs_in_beam_and_again_inside_the_served_model(
        make_pipeline_config, tiny_raw_demo_dir, tmp_path):
    """keras:<Application>: Beam computes the features; the exported model rebuilds the same
    network, so encode_image_bytes on the PNG equals encode_image on Beam's features."""
    from models.export import load_serving_model
    from models.example_codec import read_split, split_files
    from pipeline.local_runner import run_pipeline

    config = make_pipeline_config(tmp_path, dataset="raw", data_dir=tiny_raw_demo_dir,
                                  hparams=TINY_RAW_HPARAMS,
                                  data={"image_encoder": "keras:MobileNetV3Small",
                                        "image_size": 32})
    result = run_pipeline(config)
    assert result.pushed_model, result.reason
    examples = _one(f"{config.pipeline_root}/RawExampleGen/examples/*")
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([576], tf.float32),  # MobileNetV3Small pooled
            TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
            ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    val = read_split(split_files(examples, "val"), spec)
    with open(Path(tiny_raw_demo_dir) / "pairs.csv", newline="", encoding="utf-8") as f:
        paths = {r["id"]: r["image"] for r in csv.DictReader(f)}
    pngs = [(Path(tiny_raw_demo_dir) / paths[i]).read_bytes() for i in val.ids[:5]]
    loaded = load_serving_model(_one(f"{config.serving_root}/cmgan/*"))
    assert {"encode_image_bytes", "encode_text_string"} <= set(loaded.signatures)
    from_bytes = loaded.signatures["encode_image_bytes"](
        image_bytes=tf.constant(pngs))["embedding"].numpy()
    from_features = loaded.signatures["encode_image"](
        image=tf.constant(val.image[:5]))["embedding"].numpy()
    np.testing.assert_allclose(from_bytes, from_features, atol=1e-4)
