"""The end-to-end input encoders (pixel CNN, Kim CNN) inside CM-GAN, and the raw-input
preprocessing functions Transform and the serving graph share."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components.datasets.types import Split
from models.cmgan import CMGAN
from models.hparams import CMGANHParams
from models.preprocessing import (normalise_text, pixels_from_bytes, scale_pixels,
                                  token_ids_to_dense, tokenize)
from models.text_encoder import KimCNNTextEncoder
from models.training import embed, train_cmgan

SIZE, TOKENS, VOCAB = 8, 12, 60
RAW_HPARAMS = dict(image_encoder="cnn", image_size=SIZE, cnn_channels=4, cnn_feature_dim=16,
                   text_encoder="kim_cnn", text_vocab_size=VOCAB, text_max_tokens=TOKENS,
                   word_embedding_dim=8, kim_filters=6, hidden_dim=16, common_dim=16,
                   inter_disc_hidden=16, batch_size=16, generator_steps=2, epochs=2,
                   validate_every=1)


def raw_split(n: int, seed: int) -> Split:
    """Pixels and token ids that carry the class (4 classes), as Transform outputs them."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 4
    pixels = np.clip(rng.random((n, SIZE * SIZE * 3)) * 0.5 + label[:, None] * 0.15, 0, 1)
    ids = rng.integers(1, VOCAB, (n, TOKENS))
    ids[:, 0] = 1 + label * 10  # one class word per text
    ids[:, TOKENS // 2:] = 0  # padding
    return Split(pixels.astype(np.float32), ids.astype(np.int64), label.astype(np.int64),
                 np.array([f"p{seed}-{i}" for i in range(n)]))


def test_generators_start_with_the_input_encoders_and_discriminators_see_their_features():
    model = CMGAN(SIZE * SIZE * 3, TOKENS, 4, CMGANHParams(**RAW_HPARAMS))
    image_g, text_g = model.image_generator, model.text_generator
    assert image_g.feature_dim == 16 and text_g.feature_dim == 18  # 16; 6 filters x 3 widths
    assert model.intra_image_discriminator.logit.kernel.shape == (16, 1)
    assert model.inter_text_discriminator.condition_dim == 18
    image_encoder_vars = {id(v) for v in image_g.input_encoder.trainable_variables}
    assert image_encoder_vars <= {id(v) for v in image_g.trainable_variables}
    assert not image_encoder_vars & {id(v) for v in model.intra_image_discriminator
                                     .trainable_variables}
    batch = raw_split(4, 0)
    common = model.encode_text(tf.constant(batch.text))
    assert common.shape == (4, 16)
    assert model.encode_image(tf.constant(batch.image)).shape == (4, 16)


def test_training_on_raw_inputs_moves_the_input_encoders_and_beats_chance():
    hparams = CMGANHParams(**RAW_HPARAMS, seed=1)
    train, val = raw_split(96, 1), raw_split(48, 2)
    reference = CMGAN(SIZE * SIZE * 3, TOKENS, 4, hparams)  # same seed -> same initial weights
    result = train_cmgan(train, val, 4, hparams, verbose=0)
    kim = result.model.text_generator.input_encoder
    assert not np.allclose(kim.embedding.embeddings.numpy(),
                           reference.text_generator.input_encoder.embedding.embeddings.numpy())
    assert result.best_val["mean"] > 0.3  # 4 classes: chance is about 0.25
    image_emb, text_emb = embed(result.model, val.image, val.text)
    assert np.all(np.isfinite(image_emb)) and np.all(np.isfinite(text_emb))
    before_image, before_text = result.initial_val_embeddings
    assert before_image.shape == image_emb.shape and not np.allclose(before_image, image_emb)


def test_kim_cnn_ignores_padding_and_reads_an_empty_text_as_zeros():
    encoder = KimCNNTextEncoder(vocab_size=20, embedding_dim=4, filters=3, dropout=0.5)
    short = np.array([[3, 4, 5, 0, 0, 0]])
    longer = np.array([[3, 4, 5, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(encoder(short).numpy(), encoder(longer).numpy(), atol=1e-6)
    np.testing.assert_array_equal(encoder(np.zeros((1, 6), np.int64)).numpy(), 0.0)


def test_text_normalisation_and_tokens_with_tensorflow_text():
    texts = tf.constant(["A  RED circle!", "ﬁne Café, naïve—test", "   "])
    assert [t.decode() for t in normalise_text(texts).numpy()] == [
        "a red circle ", "fine café naïve test", " "]
    tokens = tokenize(texts).to_list()
    assert tokens == [[b"a", b"red", b"circle"], [b"fine", b"caf\xc3\xa9", b"na\xc3\xafve",
                                                  b"test"], []]


def test_token_ids_are_shifted_for_padding_and_cut_to_length():
    ids = tf.ragged.constant([[0, 5, 7], [], [1, 2, 3, 4, 5, 6]], dtype=tf.int64)
    dense = token_ids_to_dense(ids, 4).numpy()
    np.testing.assert_array_equal(dense, [[1, 6, 8, 0], [0, 0, 0, 0], [2, 3, 4, 5]])


def test_raw_pixel_strings_decode_and_scale():
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8) * 20
    decoded = pixels_from_bytes(tf.constant([pixels.tobytes(), b""]), 2).numpy()
    np.testing.assert_array_equal(decoded[0], pixels)
    np.testing.assert_array_equal(decoded[1], 0)  # short strings are zero-padded
    np.testing.assert_allclose(scale_pixels(decoded).numpy()[0], pixels / 255.0, rtol=1e-6)


def test_hparams_reject_unknown_encoders():
    with pytest.raises(ValueError, match="image_encoder"):
        CMGANHParams(image_encoder="keras:VGG19")
    with pytest.raises(ValueError, match="text_encoder"):
        CMGANHParams(text_encoder="bert")
