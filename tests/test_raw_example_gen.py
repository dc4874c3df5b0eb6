"""RawExampleGen end to end: real TFX LocalDagRunner / real Beam DirectRunner on tiny raw folders
holding every kind of bad record, the quarantine outputs and their accounting, the threshold,
the raw demo, the mixed Wikipedia dataset and the keras encoder path (Beam == direct call)."""
from __future__ import annotations

import collections
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.raw_example_gen.component import QuarantinedRecords, RawExampleGen
from components.raw_example_gen.executor import Executor
from models.image_decoding import decode_and_resize

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia"
SIZE = 16
BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _encoded(fmt: str, shape=(24, 20, 3), seed: int = 0, mode=None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


# (id, image file or None, image bytes, text bytes, label, split, expected reason or None)
def _rows():
    jpeg, png = _encoded("JPEG", seed=1), _encoded("PNG", seed=2)
    return [
        (b"good-jpg", "good.jpg", jpeg, b"a red circle", b"red", b"train", None),
        (b"good-png", "good.png", png, "crème brûlée square".encode(), b"blue", b"train", None),
        (b"good-grey", "grey.jpg", _encoded("JPEG", (30, 30), 3), b"grey thing", b"green",
         b"train", None),
        (b"good-rgba", "rgba.png", _encoded("PNG", (10, 14, 4), 4), b"see-through", b"red",
         b"val", None),
        (b"good-val", "val.png", _encoded("PNG", seed=5), b"a blue one", b"blue", b"val", None),
        (b"good-test", "test.jpg", _encoded("JPEG", seed=6), b"green again", b"green", b"test",
         None),
        (b"good-test2", "test2.png", _encoded("PNG", seed=7), b"  padded caption ", b"red",
         b"test", None),
        (b"trunc-jpg", "trunc.jpg", jpeg[: len(jpeg) // 2], b"cut", b"red", b"train",
         "unreadable_image"),
        (b"trunc-png", "trunc.png", png[:-6], b"cut", b"blue", b"train", "unreadable_image"),
        (b"text-as-jpg", "notes.jpg", b"this is not an image\n", b"x", b"red", b"train",
         "not_an_image"),
        (b"a-gif", "anim.gif", _encoded("GIF", seed=8), b"x", b"red", b"train", "not_an_image"),
        (b"a-bmp", "pic.bmp", _encoded("BMP", seed=9), b"x", b"red", b"train", "not_an_image"),
        (b"no-file", "missing.jpg", None, b"x", b"red", b"train", "missing_image_file"),
        (b"empty-text", "good.jpg", None, b"", b"red", b"train", "empty_text"),
        (b"blank-text", "good.jpg", None, b"  \t ", b"red", b"train", "empty_text"),
        (b"latin1-text", "good.jpg", None, b"caf\xe9", b"red", b"train", "non_utf8_text"),
        (b"no-label", "good.jpg", None, b"x", b"", b"train", "missing_label"),
        (b"bad-label", "good.jpg", None, b"x", b"purple", b"train", "unknown_label"),
        (b"good-jpg", "good.png", None, b"same id again", b"blue", b"test", "duplicate_id"),
        (b"", "good.jpg", None, b"no id", b"red", b"train", "missing_id"),
    ]


def write_bad_folder(folder: Path) -> Path:
    """A raw pair folder with 7 good records and one of every bad kind (13 bad)."""
    (folder / "img").mkdir(parents=True)
    lines = [b"id,image,text,label,split"]
    for record_id, name, data, text, label, split, _ in _rows():
        if data is not None:
            (folder / "img" / name).write_bytes(data)
        lines.append(b",".join([record_id, b"img/" + name.encode(), text, label, split]))
    (folder / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "classes.txt").write_text("red\nblue\ngreen\n")
    return folder


EXPECTED_REASONS = collections.Counter(r[-1] for r in _rows() if r[-1])
EXPECTED_ACCEPTED = {"train": 3, "val": 2, "test": 2}


def run_local(component, base: Path, pipeline_name: str = "raw-test"):
    """A one-component TFX pipeline on LocalDagRunner with its own sqlite MLMD."""
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from pipeline.metadata import latest_run_executions, output_artifacts

    metadata_path = str(base / "metadata.sqlite")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(base / "root"), components=[component],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=BEAM_ARGS, enable_cache=False))
    execution = latest_run_executions(metadata_path, pipeline_name)["RawExampleGen"]
    return output_artifacts(metadata_path, execution.id)


def run_executor(base: Path, **properties):
    """Executor.Do with real Beam, outside TFX (faster; same code path as the component)."""
    from tfx.types import standard_artifacts

    examples, quarantine = standard_artifacts.Examples(), QuarantinedRecords()
    examples.uri, quarantine.uri = str(base / "examples"), str(base / "quarantine")
    os.makedirs(examples.uri)
    os.makedirs(quarantine.uri)
    exec_properties = dict(dataset="raw", seed=0, val_fraction=0.15, image_encoder="cnn",
                           image_encoder_weights="none", image_size=SIZE, text_encoder="kim_cnn",
                           max_quarantine_fraction=1.0)
    exec_properties.update(properties)
    Executor(Executor.Context(beam_pipeline_args=BEAM_ARGS, tmp_dir=str(base / "tmp"),
                              unique_id="0")).Do({}, {"examples": [examples],
                                                      "quarantine": [quarantine]},
                                                 exec_properties)
    return examples, quarantine


def read_examples(uri: str, split: str) -> list[tf.train.Example]:
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    assert [os.path.basename(f) for f in files] == ["data_tfrecord-00000-of-00001.gz"]
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def feature(example: tf.train.Example, key: str):
    value = example.features.feature[key]
    return getattr(value, value.WhichOneof("kind")).value


def read_quarantine(uri: str) -> tuple[list[dict], dict]:
    lines = Path(uri, "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], json.loads(Path(uri, "summary.json").read_text())


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_run")
    folder = write_bad_folder(base / "data")
    outputs = run_local(RawExampleGen(dataset="raw", data_dir=str(folder), image_encoder="cnn",
                                      image_size=SIZE, max_quarantine_fraction=0.9), base)
    return folder, outputs


def test_every_bad_record_is_quarantined_with_its_reason_and_counted(bad_run):
    folder, outputs = bad_run
    quarantine = outputs["quarantine"][0]
    assert quarantine.type_id and Path(quarantine.uri, "records.jsonl").exists()
    records, summary = read_quarantine(quarantine.uri)
    assert collections.Counter(r["reason"] for r in records) == EXPECTED_REASONS
    expected = {r[0].decode(): r[-1] for r in _rows() if r[-1] and r[0] != b"good-jpg"}
    for record in records:
        assert set(record) >= {"id", "row", "source", "field", "reason", "detail"}
        if record["reason"] != "duplicate_id":
            assert expected[record["id"]] == record["reason"], record
    by_reason = {r["reason"]: r for r in records}
    duplicate = by_reason["duplicate_id"]
    assert (duplicate["id"], duplicate["row"], duplicate["field"]) == ("good-jpg", 18, "id")
    assert "first appears at row 0" in duplicate["detail"]
    assert by_reason["missing_id"]["row"] == 19
    assert by_reason["missing_image_file"]["source"] == str(folder / "img" / "missing.jpg")
    assert by_reason["non_utf8_text"]["source"] == str(folder / "pairs.csv")
    assert by_reason["unknown_label"]["field"] == "label" and "purple" in by_reason[
        "unknown_label"]["detail"]
    assert [r["row"] for r in records] == sorted(r["row"] for r in records)  # CSV order
    assert summary["by_reason"] == dict(EXPECTED_REASONS)
    assert summary["records_in"] == len(_rows()) == 20
    assert summary["accepted"] + summary["quarantined"] == summary["records_in"]
    assert summary["accepted_by_split"] == EXPECTED_ACCEPTED
    assert summary["quarantined"] == sum(EXPECTED_REASONS.values()) == 13
    props = quarantine.custom_properties
    assert (props["records_in"].int_value, props["accepted"].int_value,
            props["quarantined"].int_value) == (20, 7, 13)


def test_accepted_examples_hold_decoded_pixels_utf8_text_and_class_indices(bad_run):
    folder, outputs = bad_run
    examples = outputs["examples"][0]
    props = examples.custom_properties
    assert json.loads(props["class_names"].string_value) == ["red", "blue", "green"]
    assert (props["num_classes"].int_value, props["image_dim"].int_value,
            props["text_dim"].int_value, props["image_size"].int_value) == (
                3, SIZE * SIZE * 3, 0, SIZE)
    assert (props["image_encoder"].string_value, props["text_encoder"].string_value) == (
        "cnn", "kim_cnn")
    assert json.loads(examples.properties["split_names"].string_value) == ["train", "val", "test"]
    rows = {r[0].decode(): r for r in _rows() if r[-1] is None}
    seen = []
    for split, count in EXPECTED_ACCEPTED.items():
        split_examples = read_examples(examples.uri, split)
        assert len(split_examples) == count
        for example in split_examples:
            record_id = feature(example, "id")[0].decode()
            _, name, _, text, label, row_split, _ = rows[record_id]
            assert row_split.decode() == split
            (pixels,) = feature(example, "image")
            assert len(pixels) == SIZE * SIZE * 3
            decoded = decode_and_resize(tf.constant((folder / "img" / name).read_bytes()), SIZE)
            np.testing.assert_array_equal(
                np.frombuffer(pixels, np.uint8).reshape(SIZE, SIZE, 3), decoded.numpy())
            assert feature(example, "text") == [text.strip()]
            assert list(feature(example, "label")) == [["red", "blue", "green"].index(
                label.decode())]
            seen.append(record_id)
    assert sorted(seen) == sorted(rows)  # the first good-jpg row is the one kept


def test_too_many_quarantined_fails_with_counts_and_keeps_the_quarantine(tmp_path):
    folder = write_bad_folder(tmp_path / "data")
    with pytest.raises(RuntimeError) as err:
        run_local(RawExampleGen(dataset="raw", data_dir=str(folder), image_size=SIZE,
                                max_quarantine_fraction=0.5), tmp_path, "raw-strict")
    message = str(err.value)
    assert "13 of 20 records quarantined (65.0%) > max_quarantine_fraction 50.0%" in message
    assert '"unreadable_image": 2' in message
    path = message.split("Quarantined records: ")[1].split(" ")[0]
    assert "quarantine-rejected" in path and Path(path).exists()
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(records) == 13
    summary = json.loads(Path(path).with_name("summary.json").read_text())
    assert (summary["records_in"], summary["accepted"], summary["quarantined"]) == (20, 7, 13)


def test_without_split_column_the_seeded_split_is_used(tmp_path):
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    lines = [b"id,image,text,label"]
    for i in range(40):
        (folder / "img" / f"{i}.png").write_bytes(_encoded("PNG", (8, 8, 3), i))
        lines.append(f"p{i},img/{i}.png,caption {i},{'ab'[i % 2]}".encode())
    (folder / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    examples, quarantine = run_executor(tmp_path, data_dir=str(folder), val_fraction=0.25,
                                        image_size=8)
    _, summary = read_quarantine(quarantine.uri)
    assert summary["accepted_by_split"] == {"train": 20, "val": 10, "test": 10}
    assert summary["quarantined"] == 0 and Path(quarantine.uri, "records.jsonl").read_text() == ""
    labels = collections.Counter(feature(e, "label")[0] for e in read_examples(examples.uri, "val"))
    assert labels == {0: 5, 1: 5}


def test_demo_is_generated_inside_the_artifact_and_fully_accepted(tmp_path):
    examples, quarantine = run_executor(tmp_path, dataset="demo", image_size=32,
                                        max_quarantine_fraction=0.0)
    _, summary = read_quarantine(quarantine.uri)
    assert summary["records_in"] == summary["accepted"] == 8 * 190
    assert summary["accepted_by_split"] == {"train": 960, "val": 240, "test": 320}
    assert Path(examples.uri, "raw_demo", "pairs.csv").exists()
    first = read_examples(examples.uri, "test")[0]
    assert len(feature(first, "image")[0]) == 32 * 32 * 3
    assert examples.get_int_custom_property("num_classes") == 8


def test_wikipedia_raw_is_mixed_raw_text_and_sift_features(tmp_path):
    if not WIKIPEDIA.is_dir():
        pytest.skip(f"the Wikipedia data is not at {WIKIPEDIA} (../shared is absent)")
    examples, quarantine = run_executor(tmp_path, dataset="wikipedia_raw",
                                        data_dir=str(WIKIPEDIA), image_encoder="features",
                                        image_size=0, max_quarantine_fraction=0.0)
    _, summary = read_quarantine(quarantine.uri)
    assert summary["records_in"] == summary["accepted"] == 2866
    assert summary["accepted_by_split"] == {"train": 1846, "val": 327, "test": 693}
    assert examples.get_int_custom_property("image_dim") == 128
    assert examples.get_int_custom_property("text_dim") == 0
    test = read_examples(examples.uri, "test")
    assert len(feature(test[0], "image")) == 128
    assert all(len(feature(e, "text")[0].split()) > 100 for e in test)


def write_good_folder(folder: Path, count: int = 6) -> Path:
    (folder / "img").mkdir(parents=True)
    lines = [b"id,image,text,label,split"]
    for i in range(count):
        (folder / "img" / f"{i}.jpg").write_bytes(_encoded("JPEG", (40, 48, 3), i))
        lines.append(f"k{i},img/{i}.jpg, caption number {i} ,c{i % 2},"
                     f"{('train', 'val', 'test')[i % 3]}".encode())
    (folder / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def features_by_id(examples, key: str) -> dict[str, np.ndarray]:
    return {feature(e, "id")[0].decode(): np.array(feature(e, key))
            for split in ("train", "val", "test") for e in read_examples(examples.uri, split)}


def test_keras_encoder_in_beam_equals_the_direct_call(tmp_path):
    from models.keras_image_encoders import encode_images_directly

    folder = write_good_folder(tmp_path / "data")
    examples, _ = run_executor(tmp_path, data_dir=str(folder),
                               image_encoder="keras:MobileNetV3Small", image_size=32)
    beam_features = features_by_id(examples, "image")
    images = np.stack([decode_and_resize(tf.constant((folder / "img" / f"{i}.jpg").read_bytes()),
                                         32).numpy() for i in range(6)])
    direct = encode_images_directly("keras:MobileNetV3Small", "none", images, image_size=32)
    ours = np.stack([beam_features[f"k{i}"] for i in range(6)])
    assert ours.shape == direct.shape == (6, examples.get_int_custom_property("image_dim"))
    scale = np.abs(direct).max()
    assert scale > 0
    np.testing.assert_allclose(ours, direct, rtol=1e-4, atol=1e-5 * scale)


def test_torch_encoders_in_beam_equal_the_direct_call(tmp_path):
    from components import torch_encoders

    for spec in (torch_encoders.MINILM, torch_encoders.EFFICIENTNET_LITE0):
        if not torch_encoders.is_available(spec):
            pytest.skip(f"{spec} needs the optional torch extra ({torch_encoders.INSTALL_COMMAND})")
    folder = write_good_folder(tmp_path / "data", 4)
    examples, _ = run_executor(tmp_path, data_dir=str(folder), image_size=0,
                               image_encoder=torch_encoders.EFFICIENTNET_LITE0,
                               text_encoder=torch_encoders.MINILM)
    assert examples.get_int_custom_property("text_dim") == torch_encoders.output_dim(
        torch_encoders.MINILM)
    size = torch_encoders.image_size(torch_encoders.EFFICIENTNET_LITE0)
    assert examples.get_int_custom_property("image_size") == size
    images = [decode_and_resize(tf.constant((folder / "img" / f"{i}.jpg").read_bytes()),
                                size).numpy() for i in range(4)]
    texts = [f"caption number {i}" for i in range(4)]  # stripped
    for key, spec, inputs in (("image", torch_encoders.EFFICIENTNET_LITE0, images),
                              ("text", torch_encoders.MINILM, texts)):
        ours = features_by_id(examples, key)
        direct = torch_encoders.encode_directly(spec, inputs)
        np.testing.assert_allclose(np.stack([ours[f"k{i}"] for i in range(4)]), direct,
                                   rtol=1e-4, atol=1e-5)


def test_bad_parameters_fail_at_construction():
    with pytest.raises(ValueError, match="image_encoder must be 'features'"):
        RawExampleGen(dataset="wikipedia_raw", data_dir="x", image_encoder="cnn")
    with pytest.raises(ValueError, match="unknown keras application"):
        RawExampleGen(dataset="raw", data_dir="x", image_encoder="keras:Nope")
    with pytest.raises(ValueError, match="text_encoder 'features'"):
        RawExampleGen(dataset="raw", data_dir="x", text_encoder="features")
    with pytest.raises(ValueError, match="leave data_dir empty"):
        RawExampleGen(dataset="demo", data_dir="x")
