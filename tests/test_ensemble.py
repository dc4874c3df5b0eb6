"""Seed ensembles (models/ensemble.py): each member is the single CM-GAN of its seed, trains on
its own stream with its own optimizers, resumes and warm starts with the others; the ensemble
retrieves with the mean of the members' cosines. The served model's ensemble is checked
end to end in test_raw_pipeline (its demo run trains two members)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.datasets import make_demo_dataset
from models.cmgan import CMGAN, LOSS_NAMES
from models.ensemble import SEED_STRIDE, CMGANEnsemble, build_model, training_batches
from models.experiment import standardise
from models.hparams import CMGANHParams
from models.metrics import l2_normalise
from models.sampling import class_balanced_batches, steps_per_epoch
from models.training import train_cmgan

TINY = CMGANHParams(epochs=2, hidden_dim=32, common_dim=24, inter_disc_hidden=16,
                    batch_size=16, validate_every=1, seed=3, ensemble_members=2)


@pytest.fixture(scope="module")
def demo():
    return standardise(make_demo_dataset(seed=0, num_classes=4, train_per_class=30,
                                         val_per_class=10, test_per_class=10))


def test_members_start_as_the_single_cmgans_of_their_seeds_and_retrieve_with_the_mean_cosine():
    keras.utils.set_random_seed(TINY.seed)
    ensemble = build_model(20, 10, 3, TINY)
    assert isinstance(ensemble, CMGANEnsemble) and len(ensemble.members) == 2
    for k, member in enumerate(ensemble.members):
        seed = TINY.seed + SEED_STRIDE * k
        assert member.hparams == TINY.replace(seed=seed, ensemble_members=1)
        keras.utils.set_random_seed(seed)
        single = build_model(20, 10, 3, member.hparams)
        assert type(single) is CMGAN
        for mine, its in zip(member.get_weights(), single.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, its)
    first, second = ensemble.members
    assert not np.allclose(first.get_weights()[0], second.get_weights()[0])

    image_in, text_in = tf.random.normal([7, 20], seed=1), tf.random.normal([7, 10], seed=2)
    image, text = ensemble.encode_image(image_in).numpy(), ensemble.encode_text(text_in).numpy()
    assert image.shape == text.shape == (7, ensemble.embedding_dim) == (7, 2 * TINY.common_dim)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    cosines = [l2_normalise(m.encode_image(image_in).numpy())
               @ l2_normalise(m.encode_text(text_in).numpy()).T for m in ensemble.members]
    np.testing.assert_allclose(image @ text.T, np.mean(cosines, axis=0), atol=1e-5)


def test_each_member_draws_its_own_stream_and_member_0_the_single_models(demo):
    train = demo.splits["train"]
    batches = training_batches(train.image, train.text, train.label, TINY, start_batch=3)
    batch = next(iter(batches))
    single = next(iter(class_balanced_batches(train.image, train.text, train.label,
                                              TINY.batch_size, seed=TINY.seed, start_batch=3)))
    assert set(batch) == {"member_0", "member_1"}
    for key, value in single.items():
        np.testing.assert_array_equal(batch["member_0"][key], value)
    assert not np.array_equal(batch["member_1"]["image"], single["image"])
    alone = training_batches(train.image, train.text, train.label,
                             TINY.replace(ensemble_members=1), start_batch=3)
    np.testing.assert_array_equal(next(iter(alone))["image"], single["image"])


def test_an_ensemble_trains_every_member_resumes_and_warm_starts(demo, tmp_path):
    train, val = demo.splits["train"], demo.splits["val"]
    hparams = TINY.replace(ema_decay=0.9)  # validation and selection swap in the averages
    first = train_cmgan(train, val, demo.num_classes, hparams,
                        checkpoint_dir=str(tmp_path / "checkpoints"), verbose=0)
    model = first.model
    steps = steps_per_epoch(len(train), hparams.batch_size)
    assert len(model.discriminator_optimizers) == 8 and len(model.generator_optimizers) == 4
    for optimizer in model.discriminator_optimizers.values():
        assert int(optimizer.iterations.numpy()) == 2 * steps
    for optimizer in model.generator_optimizers.values():
        assert int(optimizer.iterations.numpy()) == 2 * steps * hparams.generator_steps
    assert len(model.generator_averages) == sum(
        len(m.generator_averages) for m in model.members) > 0
    for record in first.history:
        for name in LOSS_NAMES:
            assert math.isfinite(record[name]), name
    assert first.val_embeddings[0].shape == (len(val), 2 * hparams.common_dim)
    assert first.best_val["mean"] > 0.0

    resumed = train_cmgan(train, val, demo.num_classes, hparams.replace(epochs=3),
                          checkpoint_dir=str(tmp_path / "checkpoints"), verbose=0)
    assert resumed.resumed_from_epoch == 2 and [r["epoch"] for r in resumed.history] == [3]
    for optimizer in resumed.model.discriminator_optimizers.values():
        assert int(optimizer.iterations.numpy()) == 3 * steps  # every member's state restored

    weights = str(tmp_path / "ensemble.weights.h5")
    resumed.model.save_weights(weights)
    warm = train_cmgan(train, val, demo.num_classes, hparams.replace(epochs=1, seed=11),
                       initial_weights=weights, verbose=0)
    assert warm.warm_started_from == weights
