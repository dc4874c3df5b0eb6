"""Raw datasets: the pairs.csv reader, the generated raw demo, Wikipedia with raw texts, image
decoding and the keras:<Application> image encoders."""
from __future__ import annotations

import collections
import hashlib
import io
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.datasets import DatasetError
from components.datasets.raw_demo import CLASSES, write_raw_demo
from components.datasets.raw_pairs import read_raw_pairs
from components.datasets.wikipedia_raw import read_wikipedia_raw
from models.image_decoding import check_image, decode_and_resize, image_problem

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia"


def encoded(fmt: str, shape=(20, 16, 3), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_pairs(folder: Path, lines: list[bytes], classes: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.csv").write_bytes(b"\n".join(lines) + b"\n")
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    return folder


# ---- pairs.csv reader ----------------------------------------------------------------------

def test_reader_keeps_raw_text_bytes_and_class_order_from_classes_txt(tmp_path):
    folder = write_pairs(tmp_path / "d", [
        b"id,image,text,label,split",
        b"a,img/a.png,caf\xe9 au lait,cat,train",  # latin-1 byte: must survive as is
        b'b,img/b.png,"a dog, running",dog,test',
        b"c,img/c.png,cr\xc3\xa8me,,val",
    ], classes="dog\ncat\n")
    pairs = read_raw_pairs(folder)
    assert pairs.class_names == ("dog", "cat")
    a, b, c = pairs.records
    assert a.text == b"caf\xe9 au lait" and b.text == b"a dog, running"
    assert c.text == "crème".encode() and c.label == "" and c.split == "val"
    assert (a.row, b.row, c.row) == (0, 1, 2)
    assert a.image_path == str(folder / "img/a.png") and a.source == str(folder / "pairs.csv")


def test_reader_without_classes_txt_uses_sorted_distinct_labels(tmp_path):
    folder = write_pairs(tmp_path / "d", [b"id,image,text,label", b"1,x.png,t,zebra",
                                          b"2,y.png,t,ant", b"3,z.png,t,", b"4,w.png,t,ant"])
    assert read_raw_pairs(folder).class_names == ("ant", "zebra")


def test_seeded_stratified_split_is_deterministic_and_per_class(tmp_path):
    lines = [b"id,image,text,label,split"]
    lines += [f"{i},{i}.png,t,{'ab'[i % 2]},".encode() for i in range(200)]
    lines += [b"fixed,f.png,t,a,test"]  # an explicit split is kept
    folder = write_pairs(tmp_path / "d", lines)
    first = read_raw_pairs(folder, seed=3)
    assert [r.split for r in first.records] == [r.split for r in read_raw_pairs(folder,
                                                                                 seed=3).records]
    assert [r.split for r in first.records] != [r.split for r in read_raw_pairs(folder,
                                                                                 seed=4).records]
    assert first.records[-1].split == "test"
    counts = collections.Counter((r.label, r.split) for r in first.records[:-1])
    for label in "ab":  # 100 rows each: 70 / 15 / 15
        assert (counts[label, "train"], counts[label, "val"], counts[label, "test"]) == (70, 15, 15)
    custom = read_raw_pairs(folder, split_fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    assert collections.Counter(r.split for r in custom.records[:-1])["val"] == 50


def test_tiny_classes_keep_a_training_pair(tmp_path):
    folder = write_pairs(tmp_path / "d", [b"id,image,text,label", b"1,a.png,t,solo",
                                          b"2,b.png,t,pair", b"3,c.png,t,pair"])
    splits = {r.id: r.split for r in read_raw_pairs(folder).records}
    assert splits["1"] == "train" and "train" in (splits["2"], splits["3"])


@pytest.mark.parametrize("lines, field, row, message", [
    ([b"id,image,label", b"1,a.png,x"], "text", None, "missing required column"),
    ([b"id,image,text,label,split", b"1,a.png,t,x,train", b"2,b.png,t,x,dev"], "split", 1,
     "unknown split 'dev'"),
    ([b"id,image,text,label", b"1,a.png,t,x", b"2,b.png,a, b,x"], None, 1,
     "has 5 fields, the header has 4"),
    ([b"id,image,text,label"], None, None, "no data rows"),
])
def test_file_level_problems_raise_naming_file_field_and_row(tmp_path, lines, field, row,
                                                             message):
    folder = write_pairs(tmp_path / "d", lines)
    with pytest.raises(DatasetError, match=message) as err:
        read_raw_pairs(folder)
    assert err.value.path == str(folder / "pairs.csv")
    assert (err.value.field, err.value.row) == (field, row)


def test_missing_pairs_csv_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="pairs.csv: missing file"):
        read_raw_pairs(tmp_path / "empty")


# ---- raw demo ------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_raw_demo_is_byte_identical_for_a_seed_fast_and_balanced(tmp_path):
    start = time.perf_counter()
    first = write_raw_demo(tmp_path / "one", seed=0)
    elapsed = time.perf_counter() - start
    assert _digest(first) == _digest(write_raw_demo(tmp_path / "two", seed=0))
    assert _digest(first) != _digest(write_raw_demo(tmp_path / "other", seed=1))
    assert elapsed < 5.0
    pairs = read_raw_pairs(first)
    assert pairs.class_names == tuple(c[0] for c in CLASSES)
    counts = collections.Counter((r.label, r.split) for r in pairs.records)
    for name in pairs.class_names:
        assert (counts[name, "train"], counts[name, "val"], counts[name, "test"]) == (120, 30, 40)
    captions = [r.text.decode() for r in pairs.records]
    assert len(set(captions)) > 0.6 * len(captions)  # varied wording, not one template
    with Image.open(first / pairs.records[0].image) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
    assert all(check_image((first / r.image).read_bytes()) is None for r in pairs.records[:50])


def test_raw_demo_is_informative_but_not_trivial(tmp_path):
    """Nearest class mean on pixels and on caption words: above chance, well below perfect."""
    pairs = read_raw_pairs(write_raw_demo(tmp_path / "demo", seed=0))
    folder = tmp_path / "demo"
    labels = np.array([pairs.class_names.index(r.label) for r in pairs.records])
    train = np.array([r.split == "train" for r in pairs.records])
    test = np.array([r.split == "test" for r in pairs.records])
    pixels = np.stack([np.asarray(Image.open(folder / r.image), np.float32).reshape(-1) / 255
                       for r in pairs.records])
    vocabulary = sorted({w for r in pairs.records for w in r.text.decode().split()})
    index = {w: i for i, w in enumerate(vocabulary)}
    words = np.zeros((len(labels), len(vocabulary)), np.float32)
    for row, record in enumerate(pairs.records):
        for word in record.text.decode().split():
            words[row, index[word]] = 1.0
    for features, low, high in ((pixels, 0.2, 0.8), (words, 0.35, 0.9)):
        means = np.stack([features[train & (labels == c)].mean(0) for c in range(len(CLASSES))])
        distances = ((features[test][:, None, :] - means[None]) ** 2).sum(-1)
        accuracy = float((distances.argmin(1) == labels[test]).mean())
        assert low < accuracy < high, accuracy  # chance is 1/8


# ---- Wikipedia with raw texts --------------------------------------------------------------

@pytest.fixture(scope="module")
def wikipedia_raw():
    if not WIKIPEDIA.is_dir():
        pytest.skip(f"the Wikipedia data is not at {WIKIPEDIA} (../shared is absent)")
    return read_wikipedia_raw(WIKIPEDIA, val_fraction=0.15, seed=0)


def test_wikipedia_raw_reads_every_article_text_including_malformed_xml(wikipedia_raw):
    from components.datasets.wikipedia import read_wikipedia

    records = wikipedia_raw.records
    assert len(records) == 2866 and all(r.problem is None for r in records)
    assert all(r.text.decode("utf-8").strip() for r in records)
    malformed = []
    for record in records:
        try:
            ET.parse(record.text_source)
        except ET.ParseError:
            malformed.append(record)
    assert 800 < len(malformed) < 1000  # about 888 as released; their texts are read too
    assert all(len(r.text.split()) > 100 for r in malformed)
    assert not any(b"&nbsp;" in r.text or b"&mdash;" in r.text for r in records)  # unescaped
    features = read_wikipedia(WIKIPEDIA, val_fraction=0.15, seed=0)  # same pairs and splits
    for split in ("train", "val", "test"):
        ours = [r for r in records if r.split == split]
        assert [r.id for r in ours] == list(features.splits[split].ids)
        np.testing.assert_array_equal(np.stack([r.image_features for r in ours]),
                                      features.splits[split].image)
        assert [wikipedia_raw.class_names.index(r.label) for r in ours] == list(
            features.splits[split].label)
    first = records[0]
    assert first.source.endswith("trainset_txt_img_cat.list")
    assert first.text_source.endswith(f"{first.id}.xml")


# ---- image decoding ------------------------------------------------------------------------

def test_image_problem_accepts_jpeg_png_and_rejects_the_rest():
    jpeg, png = encoded("JPEG"), encoded("PNG")
    assert image_problem(jpeg) is None and image_problem(png) is None
    assert image_problem(encoded("GIF")) == "not_an_image"
    assert image_problem(encoded("BMP")) == "not_an_image"
    assert image_problem(b"just some text, renamed .jpg") == "not_an_image"
    assert image_problem(b"") == "not_an_image"
    for data in (jpeg, png):
        for cut in (len(data) // 2, len(data) - 2, len(data) - 9):
            assert image_problem(data[:cut]) == "unreadable_image", (data[:4], cut)
    reason, detail = check_image(jpeg[: len(jpeg) // 2])
    assert reason == "unreadable_image" and "JPEG does not decode" in detail


def test_decode_and_resize_gives_rgb_uint8_in_graphs_too():
    grey = encoded("PNG", (30, 40))
    rgba = encoded("PNG", (12, 12, 4))
    jpeg = encoded("JPEG", (50, 50, 3))
    for data in (grey, rgba, jpeg):
        out = decode_and_resize(tf.constant(data), 8)
        assert out.dtype == tf.uint8 and out.shape == (8, 8, 3)
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    same = decode_and_resize(tf.constant(buffer.getvalue()), 16).numpy()
    np.testing.assert_array_equal(same, pixels)  # lossless, no resize: exact pixels

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def batch(images):
        return tf.map_fn(lambda b: decode_and_resize(b, 8), images,
                         fn_output_signature=tf.TensorSpec([8, 8, 3], tf.uint8))

    mapped = batch(tf.constant([grey, jpeg])).numpy()
    np.testing.assert_array_equal(mapped[1], decode_and_resize(tf.constant(jpeg), 8).numpy())


# ---- keras:<Application> encoders ----------------------------------------------------------

def test_keras_encoder_with_weights_none_is_deterministic():
    from models.keras_image_encoders import (build_keras_encoder, default_image_size,
                                             encode_images_directly, parse_keras_encoder)

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    first = build_keras_encoder("keras:MobileNetV3Small", "none", 32, seed=0)
    second = build_keras_encoder("keras:MobileNetV3Small", "none", 32, seed=0)
    a, b = first.encode(images), second.encode(images)
    assert a.shape == (3, first.dim) and a.dtype == np.float32 and np.abs(a).max() > 0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, encode_images_directly("keras:MobileNetV3Small", "none",
                                                            images))
    other_seed = build_keras_encoder("keras:MobileNetV3Small", "none", 32, seed=1).encode(images)
    assert not np.array_equal(a, other_seed)
    assert default_image_size("keras:VGG19") == 224
    assert default_image_size("keras:InceptionV3") == 299
    assert parse_keras_encoder("keras:VGG19") == "VGG19"
    for bad in ("keras:NoSuchNet", "keras:", "VGG19"):
        with pytest.raises(ValueError):
            parse_keras_encoder(bad)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_keras_encoder("keras:MobileNetV3Small", "/nonexistent/weights.h5", 32)
