"""Kim (2014) sentence CNN on token ids, trained end to end as the text generator's first stage.

The paper's text input is a 300-d Kim CNN sentence feature; here the CNN is part of the text
generator, so the semantic and adversarial losses shape it. Token ids come from Transform
(``models.preprocessing``): 0 is padding, 1..vocab are words, vocab+1 is out-of-vocabulary.
"""
from __future__ import annotations

import keras

KIM_FILTER_WIDTHS = (3, 4, 5)


class KimCNNTextEncoder(keras.layers.Layer):
    """ids [B, L] -> embeddings -> Conv1D of widths 3, 4, 5 -> max over time -> concat."""

    def __init__(self, vocab_size: int, embedding_dim: int = 64, filters: int = 100,
                 dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim
        self.filters, self.dropout_rate = filters, dropout
        # +2: padding id 0 and the out-of-vocabulary id vocab_size + 1.
        self.embedding = keras.layers.Embedding(vocab_size + 2, embedding_dim, name="embedding")
        self.convolutions = [keras.layers.Conv1D(filters, width, activation="relu",
                                                 padding="same", name=f"conv_width{width}")
                             for width in KIM_FILTER_WIDTHS]
        self.dropout = keras.layers.Dropout(dropout)
        self.output_dim = filters * len(KIM_FILTER_WIDTHS)

    def build(self, input_shape):
        self.embedding.build(input_shape)
        for conv in self.convolutions:
            conv.build((input_shape[0], input_shape[1], self.embedding_dim))
        self.built = True

    def call(self, token_ids, training=False):
        token_ids = keras.ops.cast(token_ids, "int32")
        mask = keras.ops.expand_dims(keras.ops.cast(token_ids > 0, "float32"), -1)
        embedded = self.embedding(token_ids) * mask
        # Padding positions must not win the max: push them far below any activation.
        pooled = [keras.ops.max(conv(embedded) * mask - (1.0 - mask) * 1e4, axis=1)
                  for conv in self.convolutions]
        features = keras.ops.concatenate(pooled, axis=-1)
        # An all-padding text (no known token) gives -1e4 everywhere; read it as zeros.
        features = keras.ops.maximum(features, 0.0)
        return self.dropout(features, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)
