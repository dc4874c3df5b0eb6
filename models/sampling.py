"""Class-balanced CM-GAN batches with tf.data.

Each element draws a class uniformly, a matched (image, text) pair of that class, and a
"wrong" pair from a different class (GAN-CLS fakes). Sampling is stateless and keyed on a
counter, so it is reproducible, infinite, and split cleanly across replicas: tf.distribute
(Keras' fit under a strategy) splits every global batch into per-replica batches of
batch_size / num_replicas_in_sync, and under MultiWorkerMirroredStrategy each worker keeps its
replicas' slices (DATA sharding): the workers draw different examples, together exactly the
single-device batch.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def _model_input(values) -> np.ndarray:
    """Token ids stay integers; features and pixels become float32."""
    values = np.asarray(values)
    return values if np.issubdtype(values.dtype, np.integer) else values.astype(np.float32)


def class_balanced_batches(image: np.ndarray, text: np.ndarray, label: np.ndarray,
                           batch_size: int, seed: int = 0, start_batch: int = 0) -> tf.data.Dataset:
    """Infinite batches; `start_batch` continues the same stream (for resumed runs)."""
    label = np.asarray(label, np.int64)
    classes = np.unique(label)
    if classes.size < 2:
        raise ValueError("class-balanced CM-GAN batches need at least two classes in train, "
                         f"found {classes.size}")
    order = np.argsort(label, kind="stable")
    counts = np.array([np.sum(label == c) for c in classes], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    images, texts = tf.constant(_model_input(image)), tf.constant(_model_input(text))
    labels = tf.constant(label)
    order_t, counts_t, offsets_t = map(tf.constant, (order, counts, offsets))
    num_classes = int(classes.size)

    def draw(class_slot, uniform):
        """Index of a uniformly drawn example of class slot `class_slot`."""
        count = tf.gather(counts_t, class_slot)
        position = tf.minimum(tf.cast(uniform * tf.cast(count, tf.float32), tf.int64),
                              count - 1)
        return tf.gather(order_t, tf.gather(offsets_t, class_slot) + position)

    def sample(counter):
        n = tf.shape(counter)[0]
        key = tf.stack([tf.constant(seed, tf.int64), counter[0]])
        u = tf.random.stateless_uniform([n, 4], seed=key)
        slot = tf.minimum(tf.cast(u[:, 0] * num_classes, tf.int64), num_classes - 1)
        shift = 1 + tf.minimum(tf.cast(u[:, 1] * (num_classes - 1), tf.int64),
                               num_classes - 2)
        wrong_slot = (slot + shift) % num_classes
        matched, wrong = draw(slot, u[:, 2]), draw(wrong_slot, u[:, 3])
        return {"image": tf.gather(images, matched), "text": tf.gather(texts, matched),
                "label": tf.gather(labels, matched),
                "wrong_image": tf.gather(images, wrong), "wrong_text": tf.gather(texts, wrong),
                "wrong_label": tf.gather(labels, wrong)}

    # Fixed parallelism, autotuning off: a few gathers per batch need no tuning, and inside the
    # TFX Trainer the autotuner's thread held the iterator's destructor for ~50 s after fit().
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (tf.data.Dataset.counter(start=start_batch * batch_size)
            .batch(batch_size, drop_remainder=True)
            .map(sample, num_parallel_calls=2)
            .prefetch(2)
            .with_options(options))
