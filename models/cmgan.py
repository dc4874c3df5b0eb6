"""CM-GAN: two cross-modal autoencoders against four discriminators, the paper's schedule.

Batches are dicts from `models.sampling.class_balanced_batches`: a matched pair
(image, text, label) and a pair of another class (wrong_image, wrong_text, wrong_label).
Every loss is a per-example sum divided by the *global* batch (tf.nn.compute_average_loss),
so gradients all-reduced across replicas equal the single-device ones; logged losses are
summed over the replicas in each step, so every replica (and every worker) logs the global
batch's losses.
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from models.discriminators import InterModalDiscriminator, IntraModalDiscriminator
from models.generator import build_generators
from models.hparams import CMGANHParams

DISCRIMINATORS = ("intra_image", "intra_text", "inter_image", "inter_text")
GENERATORS = ("image", "text")
LOSS_NAMES = tuple(f"d_{d}_loss" for d in DISCRIMINATORS) + tuple(
    f"g_{g}_loss" for g in GENERATORS) + ("g_image_semantic_loss", "g_text_semantic_loss",
                                           "common_l1_distance")


def _bce(logits, target: float):
    """Per-example binary cross-entropy of logits against a constant target."""
    logits = tf.cast(logits, tf.float32)  # losses in float32 under mixed precision too
    labels = tf.fill(tf.shape(logits), tf.constant(target, logits.dtype))
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)


def _pair_loss(unit, other_unit, label, scale: float):
    """Per-example DSCMR-style pairwise loss: for each row i, the mean over the batch's j of
    the logistic loss of scale * cos(z_i, z'_j) against [label_i == label_j]."""
    logits = scale * tf.matmul(unit, other_unit, transpose_b=True)
    same = tf.cast(tf.equal(label[:, None], label[None, :]), logits.dtype)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(same, logits), axis=-1)


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """A MultiWorkerMirroredStrategy over more than one worker (what Keras tests too)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


def _average(per_example):
    return tf.nn.compute_average_loss(per_example)


@contextlib.contextmanager
def _dtype_policy(precision: str):
    """Keras' global dtype policy while CM-GAN's layers are made (they keep it), then back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class _ReplicaConsistentLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling, with one verdict for all replicas: Keras checks each
    replica's own (not yet all-reduced) gradients, so with more than one replica one could
    skip a step (halving its scale) while another applies it, and the replicas drift apart.
    Any replica's inf/NaN makes every replica skip the step."""

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        bad = context.all_reduce("SUM", tf.cast(tf.logical_not(finite), tf.float32))
        return tf.equal(bad, 0.0)


class BuiltInInit(keras.Model):
    """A model whose layers are all built in __init__ and its optimizers in compile (CMGAN and
    models.ensemble.CMGANEnsemble)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' version (under a tf.distribute strategy) takes a batch from the training
        iterator, which then skips it, and strategy.reduce()s the batch dict, which
        MultiWorkerMirroredStrategy cannot do ("unsupported type dict"). Without an unbuilt
        layer no batch is needed."""
        if getattr(self, "_distribute_strategy", None) is None or not all(
                layer.built for layer in self._flatten_layers()):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=())
        return None


class CMGAN(BuiltInInit):
    def __init__(self, image_dim: int, text_dim: int, num_classes: int,
                 hparams: CMGANHParams = CMGANHParams(), **kwargs):
        super().__init__(**kwargs)
        self.hparams = hparams
        self.image_dim, self.text_dim, self.num_classes = image_dim, text_dim, num_classes
        # Mixed precision: every layer computes in float16/bfloat16 with float32 variables.
        with _dtype_policy(hparams.precision):
            self.image_generator, self.text_generator = build_generators(
                image_dim, text_dim, num_classes, hparams)
            # The discriminators see modality features: after the input encoders, if any.
            image_dim = self.image_generator.feature_dim
            text_dim = self.text_generator.feature_dim
            self.intra_image_discriminator = IntraModalDiscriminator(image_dim, name="intra_image")
            self.intra_text_discriminator = IntraModalDiscriminator(text_dim, name="intra_text")
            # Conditioned on the image feature: real (E_I(x), x), fake (E_T(t), x).
            self.inter_image_discriminator = InterModalDiscriminator(
                hparams.common_dim, image_dim, hparams, name="inter_image")
            # Conditioned on the text feature: real (E_T(t), t), fake (E_I(x), t).
            self.inter_text_discriminator = InterModalDiscriminator(
                hparams.common_dim, text_dim, hparams, name="inter_text")
            self.intra_image_discriminator.build((None, image_dim))
            self.intra_text_discriminator.build((None, text_dim))
            self.inter_image_discriminator.build()
            self.inter_text_discriminator.build()
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        # Replicas hold identical generator weights, so the first replica's update suffices.
        self.generator_averages = [
            self.add_weight(shape=v.shape, initializer=keras.initializers.Constant(v.numpy()),
                            trainable=False, aggregation="only_first_replica",
                            name=f"ema_{v.name}") for v in self.generator_variables()
        ] if hparams.ema_decay else []
        self.built = True

    def generator_variables(self) -> list:
        """Trainable weights of both generators, the shared encoder once."""
        unique = {}
        for variable in (self.image_generator.trainable_variables
                         + self.text_generator.trainable_variables):
            unique.setdefault(id(variable), variable)
        return list(unique.values())

    def swap_generator_averages(self) -> None:
        """Exchanges generator weights and their moving averages (call again to undo)."""
        for variable, average in zip(self.generator_variables(), self.generator_averages):
            current = tf.identity(variable.value)
            variable.assign(average.value)
            average.assign(current)

    # --- inference -------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """Length of what encode_image / encode_text return (hparams.retrieval_space)."""
        label = self.hparams.retrieval_space == "common_and_label"
        return self.hparams.common_dim + (self.num_classes if label else 0)

    def encode_image(self, image, training=False):
        """The retrieval vector (hparams.retrieval_space), float32 whatever the precision."""
        return self._retrieval_vector(self.image_generator, image, training)

    def encode_text(self, text, training=False):
        return self._retrieval_vector(self.text_generator, text, training)

    def _retrieval_vector(self, generator, inputs, training):
        common = generator.encode(inputs, training=training)
        vector = tf.cast(common, tf.float32)
        if self.hparams.retrieval_space == "common":
            return vector
        posteriors = tf.nn.softmax(tf.cast(generator.classify(common, training=training),
                                           tf.float32))
        return tf.concat([tf.math.l2_normalize(vector, axis=-1),
                          tf.math.l2_normalize(posteriors, axis=-1)], axis=-1)

    def call(self, inputs, training=False):
        return {"image": self.encode_image(inputs["image"], training=training),
                "text": self.encode_text(inputs["text"], training=training)}

    # --- training --------------------------------------------------------------------------
    def compile(self, steps_per_epoch: int = 1, **kwargs):
        """Six Adam optimizers (one per network) with the lr halved every
        `lr_halving_epochs`; call inside the strategy scope (keras-team/keras#20164)."""
        super().compile(jit_compile=kwargs.pop("jit_compile", self.hparams.jit_compile),
                        **kwargs)
        hp = self.hparams

        def adam(updates_per_iteration: int, name: str):
            schedule = keras.optimizers.schedules.ExponentialDecay(
                hp.learning_rate, decay_steps=hp.lr_halving_epochs * steps_per_epoch
                * updates_per_iteration, decay_rate=0.5, staircase=True)
            adam = keras.optimizers.Adam(schedule, beta_1=hp.beta_1, beta_2=hp.beta_2,
                                         weight_decay=hp.weight_decay or None, name=name)
            if hp.precision == "mixed_float16":  # float16 gradients underflow unscaled
                return _ReplicaConsistentLossScaleOptimizer(adam, name=f"{name}_loss_scale")
            return adam

        self.discriminator_optimizers = {
            d: adam(1, f"{d}_discriminator_adam") for d in DISCRIMINATORS}
        self.generator_optimizers = {
            g: adam(hp.generator_steps, f"{g}_generator_adam") for g in GENERATORS}
        for d in DISCRIMINATORS:
            self.discriminator_optimizers[d].build(self.discriminator(d).trainable_variables)
        for g in GENERATORS:
            self.generator_optimizers[g].build(self.generator(g).trainable_variables)

    def discriminator(self, name: str) -> keras.Model:
        return getattr(self, f"{name}_discriminator")

    def generator(self, name: str) -> keras.Model:
        return getattr(self, f"{name}_generator")

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def _features(self, modality: str, inputs):
        """Modality features as the discriminators see them: input encoders held fixed."""
        return tf.stop_gradient(self.generator(modality).featurize(inputs, training=True))

    def _discriminator_losses(self, batch):
        """Per-example losses of the four discriminators; generators held fixed."""
        ig, tg = self.image_generator, self.text_generator
        x, t = self._features("image", batch["image"]), self._features("text", batch["text"])
        x_wrong = self._features("image", batch["wrong_image"])
        t_wrong = self._features("text", batch["wrong_text"])
        c_x, c_t = ig.encode_features(x, training=True), tg.encode_features(t, training=True)
        x_hat, t_hat = ig.decode(c_x, training=True), tg.decode(c_t, training=True)
        c_x_wrong = ig.encode_features(x_wrong, training=True)
        c_t_wrong = tg.encode_features(t_wrong, training=True)
        c_x, c_t, x_hat, t_hat, c_x_wrong, c_t_wrong = map(
            tf.stop_gradient, (c_x, c_t, x_hat, t_hat, c_x_wrong, c_t_wrong))
        mismatched = self.hparams.wrong_pair == "mismatched"
        d_ii, d_it = self.intra_image_discriminator, self.intra_text_discriminator
        d_ei, d_et = self.inter_image_discriminator, self.inter_text_discriminator
        wrong_for_image = d_ei(c_x_wrong, x if mismatched else x_wrong, training=True)
        wrong_for_text = d_et(c_t_wrong, t if mismatched else t_wrong, training=True)
        return {
            "intra_image": _bce(d_ii(x), 1.0) + _bce(d_ii(x_hat), 0.0),
            "intra_text": _bce(d_it(t), 1.0) + _bce(d_it(t_hat), 0.0),
            "inter_image": _bce(d_ei(c_x, x, training=True), 1.0)
            + 0.5 * _bce(d_ei(c_t, x, training=True), 0.0) + 0.5 * _bce(wrong_for_image, 0.0),
            "inter_text": _bce(d_et(c_t, t, training=True), 1.0)
            + 0.5 * _bce(d_et(c_x, t, training=True), 0.0) + 0.5 * _bce(wrong_for_text, 0.0),
        }, tf.cast(tf.reduce_mean(tf.abs(c_x - c_t), axis=-1), tf.float32)

    def _generator_loss(self, modality: str, batch):
        """G_I: fool the text-conditioned inter D and the image intra D, plus softmax loss;
        G_T mirrors it. Forward pass recomputed for every step, as in the paper. An input
        encoder of the own modality learns through the common representation only. The other
        modality's common vectors, when a common-space loss needs them, are held fixed."""
        hp = self.hparams
        other_modality = "text" if modality == "image" else "image"
        own = batch[modality]
        other = self._features(other_modality, batch[other_modality])
        generator = self.generator(modality)
        common = tf.cast(generator.encode(own, training=True), tf.float32)
        logits = tf.cast(generator.classify(common, training=True), tf.float32)
        semantic = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], logits)
        total = hp.semantic_weight * semantic
        if hp.distillation_weight:
            # The teacher sees its input as in training (dropout on): on pascal_sentence_dev's
            # validation a clean teacher scored 0.0086 lower, and the pair's joint posterior
            # (teacher + own logits) level (README "Cross-modal distillation").
            other_generator = self.generator(other_modality)
            teacher = tf.stop_gradient(tf.nn.softmax(tf.cast(other_generator.classify(
                other_generator.encode_features(other, training=True), training=True),
                tf.float32)))
            total += hp.distillation_weight * tf.nn.softmax_cross_entropy_with_logits(
                teacher, logits)
        if hp.adversarial_weight:
            inter = self.inter_text_discriminator if modality == "image" else (
                self.inter_image_discriminator)
            intra = self.intra_image_discriminator if modality == "image" else (
                self.intra_text_discriminator)
            reconstruction = generator.decode(common, training=True)
            total += hp.adversarial_weight * (
                _bce(inter(common, other, training=True), 1.0) + _bce(intra(reconstruction), 1.0))
        if hp.pair_loss_weight or hp.invariance_weight:
            other_common = tf.stop_gradient(tf.cast(self.generator(
                other_modality).encode_features(other, training=True), tf.float32))
            unit, other_unit = tf.math.l2_normalize(common, -1), tf.math.l2_normalize(
                other_common, -1)
            if hp.pair_loss_weight:
                total += hp.pair_loss_weight * 0.5 * (
                    _pair_loss(unit, other_unit, batch["label"], hp.cosine_scale)
                    + _pair_loss(unit, tf.stop_gradient(unit), batch["label"], hp.cosine_scale))
            if hp.invariance_weight:
                total += hp.invariance_weight * tf.reduce_sum(
                    tf.square(unit - other_unit), axis=-1)
        return total, semantic

    def train_step(self, batch):
        with tf.GradientTape(persistent=True) as tape:
            per_example, l1 = self._discriminator_losses(batch)
            d_losses = {d: _average(loss) for d, loss in per_example.items()}
            # Mixed float16: each loss scaled by its optimizer's loss scale (else unchanged).
            scaled = {d: self.discriminator_optimizers[d].scale_loss(loss)
                      for d, loss in d_losses.items()}
        if self.hparams.adversarial_weight:  # the no-GAN ablation trains no discriminator
            for d in DISCRIMINATORS:
                variables = self.discriminator(d).trainable_variables
                self.discriminator_optimizers[d].apply_gradients(
                    zip(tape.gradient(scaled[d], variables), variables))
        del tape
        g_losses, semantic_losses = {}, {}
        for _ in range(self.hparams.generator_steps):
            for g in GENERATORS:
                variables = self.generator(g).trainable_variables
                with tf.GradientTape() as tape:
                    total, semantic = self._generator_loss(g, batch)
                    g_losses[g] = _average(total)
                    scaled_loss = self.generator_optimizers[g].scale_loss(g_losses[g])
                semantic_losses[g] = _average(semantic)
                # Without adversarial terms the decoders get no gradient: leave them out.
                self.generator_optimizers[g].apply_gradients(
                    [(grad, v) for grad, v in zip(tape.gradient(scaled_loss, variables),
                                                  variables) if grad is not None])
        logged = {f"d_{d}_loss": d_losses[d] for d in DISCRIMINATORS}
        logged.update({f"g_{g}_loss": g_losses[g] for g in GENERATORS})
        logged.update({f"g_{g}_semantic_loss": semantic_losses[g] for g in GENERATORS})
        logged["common_l1_distance"] = _average(l1)
        decay = self.hparams.ema_decay
        for variable, average in zip(self.generator_variables(), self.generator_averages):
            average.assign(decay * average + (1.0 - decay) * variable)
        values = tf.stack([tf.cast(logged[name], tf.float32) for name in LOSS_NAMES])
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:  # one all-reduce, all losses
            values = tf.distribute.get_replica_context().all_reduce("SUM", values)
        for name, value in zip(LOSS_NAMES, tf.unstack(values)):
            self.loss_trackers[name].update_state(value)
        results = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras 3.6's fit averages step outputs across workers with strategy.reduce(MEAN,
            # axis=0), which needs an axis: shape [1] reduces to the scalar mean.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results
