"""CM-GAN model structure, schedule, sampling, checkpoint resume and distribution."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.datasets import make_demo_dataset
from models.cmgan import CMGAN, LOSS_NAMES
from models.data import pooled
from models.experiment import standardise
from models.hparams import CMGANHParams, hparams_for_dataset
from models.sampling import class_balanced_batches, steps_per_epoch
from models.training import embed, train_cmgan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = CMGANHParams(epochs=2, hidden_dim=32, common_dim=24, inter_disc_hidden=16,
                    batch_size=16, validate_every=1)


@pytest.fixture(scope="module")
def demo():
    return standardise(make_demo_dataset(seed=0, num_classes=4, train_per_class=30,
                                         val_per_class=10, test_per_class=10))


def test_hparams_defaults_are_the_papers():
    hp = CMGANHParams()
    assert (hp.common_dim, hp.hidden_dim, hp.inter_disc_hidden) == (1024, 1024, 512)
    assert (hp.learning_rate, hp.beta_1, hp.beta_2) == (1e-3, 0.5, 0.999)
    assert (hp.batch_size, hp.generator_steps, hp.lr_halving_epochs) == (64, 5, 100)
    assert hp.leaky_relu_slope == 0.2 and hp.shared_encoder


def test_hparams_overrides_and_errors():
    hp = CMGANHParams.from_dict({"epochs": "7", "shared_encoder": "false", "learning_rate": "2e-4"})
    assert hp.epochs == 7 and hp.shared_encoder is False and hp.learning_rate == 2e-4
    assert CMGANHParams.from_dict(hp.to_dict()) == hp
    with pytest.raises(ValueError, match="unknown CM-GAN hyperparameters: epoch"):
        CMGANHParams.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="wrong_pair"):
        CMGANHParams(wrong_pair="other")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        CMGANHParams(batch_size=0)
    assert hparams_for_dataset("wikipedia", {"epochs": 3}).epochs == 3


def test_encoder_two_is_one_shared_layer():
    model = CMGAN(20, 10, 3, TINY)
    assert model.image_generator.shared_encoder is model.text_generator.shared_encoder
    shared = {id(v) for v in model.image_generator.shared_encoder.trainable_variables}
    assert shared <= {id(v) for v in model.text_generator.trainable_variables}
    # Own encoder, decoder and classifier are per modality.
    assert model.image_generator.own_encoder is not model.text_generator.own_encoder
    x = tf.random.normal([5, 20])
    out = model.image_generator(x)
    assert out["common"].shape == (5, 24) and out["reconstruction"].shape == (5, 20)
    assert out["class_logits"].shape == (5, 3)
    assert model.text_generator(tf.random.normal([5, 10]))["reconstruction"].shape == (5, 10)


def test_untied_ablation_starts_from_one_initialisation():
    model = CMGAN(20, 10, 3, TINY.replace(shared_encoder=False))
    image_shared = model.image_generator.shared_encoder
    text_shared = model.text_generator.shared_encoder
    assert image_shared is not text_shared
    for a, b in zip(image_shared.get_weights(), text_shared.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_shared_cosine_classifier_option():
    model = CMGAN(20, 10, 3, TINY.replace(semantic_classifier="cosine", shared_classifier=True))
    assert model.image_generator.semantic_classifier is model.text_generator.semantic_classifier
    logits = model.image_generator.classify(tf.random.normal([6, 24]))
    assert float(tf.reduce_max(tf.abs(logits))) <= TINY.cosine_scale + 1e-4  # scaled cosine
    paper = CMGAN(20, 10, 3, TINY)
    assert paper.image_generator.semantic_classifier is not (
        paper.text_generator.semantic_classifier)


def test_common_and_label_retrieval_space_appends_the_class_posteriors():
    hp = TINY.replace(semantic_classifier="cosine", shared_classifier=True,
                      retrieval_space="common_and_label")
    model = CMGAN(20, 10, 3, hp)
    assert model.embedding_dim == 24 + 3
    for generator, encode, dim in ((model.image_generator, model.encode_image, 20),
                                   (model.text_generator, model.encode_text, 10)):
        features = tf.random.normal([5, dim])
        vectors = encode(features).numpy()
        assert vectors.shape == (5, 27)
        common = generator.encode(features)
        np.testing.assert_allclose(vectors[:, :24], tf.math.l2_normalize(common, axis=1),
                                   atol=1e-6)
        posteriors = tf.nn.softmax(generator.classify(common))
        np.testing.assert_allclose(vectors[:, 24:], tf.math.l2_normalize(posteriors, axis=1),
                                   atol=1e-6)
    paper = CMGAN(20, 10, 3, TINY)
    assert paper.embedding_dim == 24
    assert paper.encode_text(tf.random.normal([5, 10])).shape == (5, 24)
    with pytest.raises(ValueError, match="retrieval_space"):
        TINY.replace(retrieval_space="label")


def test_discriminator_inputs():
    model = CMGAN(20, 10, 3, TINY)
    common = tf.random.normal([4, 24])
    assert model.intra_image_discriminator(tf.random.normal([4, 20])).shape == (4, 1)
    assert model.inter_image_discriminator(common, tf.random.normal([4, 20])).shape == (4, 1)
    assert model.inter_text_discriminator(common, tf.random.normal([4, 10])).shape == (4, 1)
    # concat[common (24), own feature (20)] -> hidden 16 -> 1
    assert model.inter_image_discriminator.hidden.dense.kernel.shape == (44, 16)


def test_class_balanced_batches_with_wrong_pairs_from_other_classes():
    labels = np.repeat(np.arange(4), [5, 50, 100, 10])  # imbalanced on purpose
    image = np.arange(len(labels), dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    text = -image[:, :2]
    batches = class_balanced_batches(image, text, labels, batch_size=64, seed=3)
    drawn, wrong = [], []
    for batch in batches.take(60):
        idx = batch["image"].numpy()[:, 0].astype(int)
        assert np.array_equal(labels[idx], batch["label"].numpy())  # pairs stay matched
        assert np.array_equal(batch["text"].numpy()[:, 0], -idx)
        widx = batch["wrong_image"].numpy()[:, 0].astype(int)
        assert np.array_equal(labels[widx], batch["wrong_label"].numpy())
        drawn.append(batch["label"].numpy())
        wrong.append(batch["wrong_label"].numpy())
    drawn, wrong = np.concatenate(drawn), np.concatenate(wrong)
    assert np.all(drawn != wrong)
    counts = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(counts, 0.25, atol=0.03)  # balanced despite 5 vs 100
    again = next(iter(class_balanced_batches(image, text, labels, 64, seed=3)))
    first = next(iter(batches))
    np.testing.assert_array_equal(again["image"], first["image"])  # seeded
    assert steps_per_epoch(65, 64) == 2 == math.ceil(65 / 64)


def test_train_step_schedule_and_finite_losses(demo):
    train = demo.splits["train"]
    result = train_cmgan(train, demo.splits["val"], demo.num_classes, TINY, verbose=0)
    model = result.model
    steps = steps_per_epoch(len(train), TINY.batch_size)
    iterations = TINY.epochs * steps
    for d in model.discriminator_optimizers.values():
        assert int(d.iterations.numpy()) == iterations  # one step per discriminator
    for g in model.generator_optimizers.values():
        assert int(g.iterations.numpy()) == iterations * TINY.generator_steps  # 5 x (G_I, G_T)
    assert len(result.history) == TINY.epochs
    for record in result.history:
        for name in LOSS_NAMES:
            assert math.isfinite(record[name]), name
    assert set(result.best_val) >= {"i2t", "t2i", "mean", "all_modal"}
    assert 1 <= result.best_epoch <= TINY.epochs


def test_learning_rate_halves_every_lr_halving_epochs():
    model = CMGAN(20, 10, 3, TINY.replace(lr_halving_epochs=2))
    model.compile(steps_per_epoch=3)
    d_lr = model.discriminator_optimizers["intra_image"].learning_rate  # schedule
    g_lr = model.generator_optimizers["image"].learning_rate
    schedule_d = model.discriminator_optimizers["intra_image"]._learning_rate
    schedule_g = model.generator_optimizers["image"]._learning_rate
    assert float(schedule_d(0)) == pytest.approx(1e-3)
    assert float(schedule_d(6)) == pytest.approx(5e-4)  # 2 epochs x 3 steps
    assert float(schedule_g(6 * 5 - 1)) == pytest.approx(1e-3)  # G steps 5x per iteration
    assert float(schedule_g(6 * 5)) == pytest.approx(5e-4)
    assert float(d_lr) == pytest.approx(1e-3) and float(g_lr) == pytest.approx(1e-3)


def test_training_learns_and_embeddings_are_deterministic(demo):
    hp = TINY.replace(epochs=8, validate_every=4, semantic_classifier="cosine",
                      shared_classifier=True)
    result = train_cmgan(demo.splits["train"], demo.splits["val"], demo.num_classes, hp,
                         verbose=0)
    assert result.best_val["mean"] > 0.4  # chance is ~0.25 with 4 balanced classes
    test = demo.splits["test"]
    a = embed(result.model, test.image, test.text)
    b = embed(result.model, test.image, test.text)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (len(test), hp.common_dim)


def test_resume_from_checkpoint_continues_epochs(demo, tmp_path):
    train, val = demo.splits["train"], demo.splits["val"]
    first = train_cmgan(train, val, demo.num_classes, TINY.replace(epochs=2),
                        checkpoint_dir=str(tmp_path), verbose=0)
    assert first.resumed_from_epoch == 0
    resumed = train_cmgan(train, val, demo.num_classes, TINY.replace(epochs=4),
                          checkpoint_dir=str(tmp_path), verbose=0)
    assert resumed.resumed_from_epoch == 2
    assert [r["epoch"] for r in resumed.history] == [3, 4]
    steps = steps_per_epoch(len(train), TINY.batch_size)
    opt = resumed.model.discriminator_optimizers["inter_image"]
    assert int(opt.iterations.numpy()) == 4 * steps  # optimizer state restored, not reset


def test_a_run_that_stopped_early_does_not_train_on_when_resumed(demo, tmp_path):
    train, val = demo.splits["train"], demo.splits["val"]
    hp = TINY.replace(epochs=40, early_stopping_patience=1)
    first = train_cmgan(train, val, demo.num_classes, hp, checkpoint_dir=str(tmp_path),
                        verbose=0)
    stopped = first.history[-1]["epoch"]
    assert stopped < hp.epochs
    resumed = train_cmgan(train, val, demo.num_classes, hp, checkpoint_dir=str(tmp_path),
                          verbose=0)
    assert resumed.resumed_from_epoch == stopped and resumed.history == []
    assert (resumed.best_epoch, resumed.best_val) == (first.best_epoch, first.best_val)


def test_refit_trains_the_same_seed_on_train_and_val_for_the_chosen_epochs(demo, tmp_path):
    train, val = demo.splits["train"], demo.splits["val"]
    hp = TINY.replace(epochs=6, refit_on_validation=True)
    result = train_cmgan(train, val, demo.num_classes, hp, checkpoint_dir=str(tmp_path),
                         verbose=0)
    selected = train_cmgan(train, val, demo.num_classes, hp.replace(refit_on_validation=False),
                           verbose=0)
    assert selected.refit_epochs is None
    assert result.refit_epochs == result.best_epoch == selected.best_epoch
    assert result.best_val == selected.best_val  # reported figures: the selection run's
    by_hand = train_cmgan(pooled([train, val]), None, demo.num_classes,
                          hp.replace(refit_on_validation=False, epochs=result.refit_epochs),
                          verbose=0)
    test = demo.splits["test"]
    refit_emb, by_hand_emb, selected_emb = (embed(r.model, test.image, test.text)
                                            for r in (result, by_hand, selected))
    np.testing.assert_allclose(refit_emb[0], by_hand_emb[0], atol=1e-5)
    np.testing.assert_allclose(refit_emb[1], by_hand_emb[1], atol=1e-5)
    assert np.abs(refit_emb[0] - selected_emb[0]).max() > 1e-3  # another model is returned
    np.testing.assert_allclose(result.val_embeddings[0],
                               embed(result.model, val.image, val.text)[0], atol=1e-6)
    assert tf.train.latest_checkpoint(str(tmp_path / "refit" / "last"))
    again = train_cmgan(train, val, demo.num_classes, hp, checkpoint_dir=str(tmp_path),
                        verbose=0)  # both phases resume from their finished checkpoints
    assert again.history == [] and again.refit_epochs == result.refit_epochs
    np.testing.assert_allclose(embed(again.model, test.image, test.text)[0], refit_emb[0],
                               atol=1e-6)


@pytest.mark.parametrize("members", [1, 2])  # one CM-GAN, a seed ensemble (models/ensemble.py)
def test_mirrored_strategy_two_replicas_stay_equal(members):
    out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "scripts",
                                                       "mirrored_training.py"), str(members)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["replicas"] == 2
    assert report["mirrored_variables"] == report["total_variables"] > 0
    assert report["mismatched"] == []  # weights and BatchNorm statistics identical
    assert all(n == 2 for n in report["optimizer_variable_replicas"])
    for record in report["history"]:
        for name in LOSS_NAMES:
            assert math.isfinite(record[name]), name
    assert report["val"]["mean"] > 0.0
    assert report["total_variables"] > 55 * members  # generator moving averages mirrored too
    assert report["embedding_dim"] == 32 * members


def test_generator_weight_average_tracks_and_swaps(demo):
    hp = TINY.replace(epochs=2, ema_decay=0.9)
    train = demo.splits["train"]
    result = train_cmgan(train, None, demo.num_classes, hp, verbose=0)
    model = result.model
    variables, averages = model.generator_variables(), model.generator_averages
    assert len(variables) == len(averages) > 0
    # The shared encoder is averaged once, not once per generator.
    assert len({id(v) for v in variables}) == len(variables)
    # Without validation the averaged weights are what the trained model serves.
    served = [v.numpy().copy() for v in variables]
    raw = [a.numpy().copy() for a in averages]
    assert any(not np.allclose(s, r) for s, r in zip(served, raw))
    model.swap_generator_averages()
    for variable, expected in zip(variables, raw):
        np.testing.assert_array_equal(variable.numpy(), expected)
    model.swap_generator_averages()
    for variable, expected in zip(variables, served):
        np.testing.assert_array_equal(variable.numpy(), expected)


def test_no_gan_ablation_trains_no_discriminator_and_leaves_the_decoders(demo):
    train = demo.splits["train"]
    hp = TINY.replace(adversarial_weight=0.0, semantic_classifier="cosine",
                      shared_classifier=True)
    model = CMGAN(train.image.shape[1], train.text.shape[1], demo.num_classes, hp)
    model.compile(steps_per_epoch=3)
    decoder = model.image_generator.decoder_output.get_weights()[0].copy()
    encoder = model.image_generator.own_encoder.get_weights()[0].copy()
    discriminator = model.inter_image_discriminator.get_weights()[0].copy()
    batches = class_balanced_batches(train.image, train.text, train.label, hp.batch_size)
    history = model.fit(batches, epochs=1, steps_per_epoch=3, verbose=0).history
    for d in model.discriminator_optimizers.values():
        assert int(d.iterations.numpy()) == 0
    for g in model.generator_optimizers.values():  # the schedule of G steps is kept
        assert int(g.iterations.numpy()) == 3 * hp.generator_steps
    np.testing.assert_array_equal(model.image_generator.decoder_output.get_weights()[0], decoder)
    np.testing.assert_array_equal(model.inter_image_discriminator.get_weights()[0], discriminator)
    assert not np.allclose(model.image_generator.own_encoder.get_weights()[0], encoder)
    assert all(math.isfinite(v[-1]) for v in history.values())


def test_distillation_adds_the_cross_entropy_against_the_paired_items_posteriors(demo):
    """Each generator's loss gains the cross-entropy of its class logits against the other
    modality's posteriors for the same pairs, and that teacher gets no gradient."""
    train = demo.splits["train"]
    hp = TINY.replace(semantic_classifier="cosine", shared_classifier=True,
                      adversarial_weight=0.0, pair_loss_weight=5.0)
    batch = next(iter(class_balanced_batches(train.image, train.text, train.label,
                                             hp.batch_size)))
    model = CMGAN(train.image.shape[1], train.text.shape[1], demo.num_classes, hp)
    distilled = CMGAN(train.image.shape[1], train.text.shape[1], demo.num_classes,
                      hp.replace(distillation_weight=2.0))
    distilled.set_weights(model.get_weights())

    def logits(net, modality):  # as in training: batch statistics (no dropout in TINY)
        generator = net.generator(modality)
        return generator.classify(generator.encode(batch[modality], training=True),
                                  training=True).numpy()

    for modality, other in (("image", "text"), ("text", "image")):
        without, _ = model._generator_loss(modality, batch)  # pylint: disable=protected-access
        with tf.GradientTape() as tape:
            with_it, _ = distilled._generator_loss(modality, batch)  # pylint: disable=protected-access
        teacher = tf.nn.softmax(logits(distilled, other)).numpy()
        log_student = tf.nn.log_softmax(logits(distilled, modality)).numpy()
        expected = -2.0 * (teacher * log_student).sum(axis=1)
        np.testing.assert_allclose(with_it.numpy() - without.numpy(), expected, rtol=1e-4,
                                   atol=1e-5)
        own_encoder = distilled.generator(other).own_encoder.trainable_variables
        assert all(g is None for g in tape.gradient(with_it, own_encoder))
    result = train_cmgan(train, demo.splits["val"], demo.num_classes,
                         hp.replace(distillation_weight=2.0, adversarial_weight=1.0), verbose=0)
    assert all(math.isfinite(r["g_image_loss"]) for r in result.history)


def test_common_space_losses_pull_same_class_pairs_together(demo):
    """DSCMR's pairwise and invariance losses: finite, and with them the same-class cross-modal
    cosine rises above the other-class one after a short run."""
    train, val = demo.splits["train"], demo.splits["val"]
    hp = TINY.replace(epochs=3, pair_loss_weight=5.0, invariance_weight=1.0,
                      semantic_classifier="cosine", shared_classifier=True)
    result = train_cmgan(train, val, demo.num_classes, hp, verbose=0)
    assert all(math.isfinite(r["g_text_loss"]) for r in result.history)
    image, text = embed(result.model, val.image, val.text)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cosine = image @ text.T
    same = val.label[:, None] == val.label[None, :]
    assert cosine[same].mean() > cosine[~same].mean() + 0.1
