"""CCA and semantic-matching baselines on a synthetic class-structured dataset."""
import dataclasses

import numpy as np
import pytest

from components.datasets.types import FeatureDataset, Split
from models import baselines
from models.data import pooled
from models.metrics import retrieval_report

NUM_CLASSES, IMAGE_DIM, TEXT_DIM = 5, 32, 16
CHANCE = 1 / NUM_CLASSES


def make_split(rng, image_means, text_means, n, noise):
    labels = np.repeat(np.arange(NUM_CLASSES), n // NUM_CLASSES)
    rng.shuffle(labels)
    # Different offsets and scales per modality so standardisation has work to do.
    image = 3.0 + 5.0 * (image_means[labels] + noise * rng.normal(size=(labels.size, IMAGE_DIM)))
    text = -1.0 + 0.2 * (text_means[labels] + noise * rng.normal(size=(labels.size, TEXT_DIM)))
    return Split(image=image.astype(np.float32), text=text.astype(np.float32),
                 label=labels.astype(np.int64),
                 ids=np.array([f"item{i}" for i in range(labels.size)]))


def make_dataset(seed=0, noise=1.5):
    rng = np.random.default_rng(seed)
    image_means = rng.normal(size=(NUM_CLASSES, IMAGE_DIM))
    text_means = rng.normal(size=(NUM_CLASSES, TEXT_DIM))
    sizes = {"train": 400, "val": 100, "test": 200}
    splits = {name: make_split(rng, image_means, text_means, n, noise)
              for name, n in sizes.items()}
    return FeatureDataset(name="synthetic", splits=splits,
                          class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)))


def with_shuffled_test_labels(dataset, seed=1):
    test = dataset.splits["test"]
    shuffled = dataclasses.replace(test, label=np.random.default_rng(seed).permutation(test.label))
    return dataclasses.replace(dataset, splits={**dataset.splits, "test": shuffled})


@pytest.fixture(scope="module")
def dataset():
    return make_dataset()


@pytest.fixture(scope="module")
def reports(dataset):
    return baselines.evaluate_baselines(dataset)


@pytest.mark.parametrize("name", ["cca", "classifier"])
def test_baselines_beat_chance_by_far(reports, name):
    report = reports[name]
    for key in ("i2t", "t2i", "mean", "all_modal", "mean@50"):
        assert report[key] > 2 * CHANCE, (name, key, report[key])
    assert all(type(v) is float for v in report.values())


def test_cca_projection_dims(dataset):
    train = dataset.splits["train"]
    full = baselines.CCABaseline(1e-2).fit(train.image, train.text)
    assert full.transform_image(train.image[:7]).shape == (7, TEXT_DIM)  # min(32, 16)
    assert full.transform_text(train.text[:7]).shape == (7, TEXT_DIM)
    assert full.correlations.shape == (TEXT_DIM,)
    assert np.all(np.diff(full.correlations) <= 1e-12)
    reduced = baselines.CCABaseline(1e-2, n_components=4).fit(train.image, train.text)
    assert reduced.image_projection.shape == (IMAGE_DIM, 4)
    assert reduced.text_projection.shape == (TEXT_DIM, 4)


def test_cca_projections_are_correlated_and_uncorrelated_across_components(dataset):
    train = dataset.splits["train"]
    cca = baselines.CCABaseline(1e-6, n_components=4).fit(train.image, train.text)
    u, v = cca.transform_image(train.image), cca.transform_text(train.text)
    cross = (u.T @ v) / (len(u) - 1)
    np.testing.assert_allclose(np.diag(cross), cca.correlations, atol=1e-4)
    np.testing.assert_allclose(u.T @ u / (len(u) - 1), np.eye(4), atol=1e-4)  # whitened


def test_classifier_embeddings_are_class_posteriors(dataset):
    test = dataset.splits["test"]
    model = baselines.fit_classifier(dataset.splits["train"], dataset.splits["val"])
    probabilities = model.transform_image(test.image)
    assert probabilities.shape == (len(test), NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert model.C in baselines.CLASSIFIER_C_GRID


def test_standardisation_uses_training_statistics_only(dataset):
    train = dataset.splits["train"]
    model = baselines.CCABaseline(1e-2).fit(train.image, train.text)
    np.testing.assert_allclose(model.image_standardiser.mean, train.image.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.text_standardiser.scale, train.text.std(axis=0), rtol=1e-4)


def test_selection_uses_validation_not_test(dataset, reports):
    shuffled = with_shuffled_test_labels(dataset)
    fitted, fitted_shuffled = baselines.fit_baselines(dataset), baselines.fit_baselines(shuffled)
    assert fitted["cca"].regularisation == fitted_shuffled["cca"].regularisation
    assert fitted["classifier"].C == fitted_shuffled["classifier"].C
    test = dataset.splits["test"]
    for name in fitted:
        np.testing.assert_array_equal(fitted[name].transform_image(test.image),
                                      fitted_shuffled[name].transform_image(test.image))
    # Scoring against shuffled labels collapses the test MAP towards chance.
    shuffled_reports = baselines.evaluate_baselines(shuffled)
    for name in reports:
        assert shuffled_reports[name]["mean"] < CHANCE + 0.1 < reports[name]["mean"]


def test_selection_follows_validation_labels(dataset):
    """Changing only val may change the pick; the chosen value is the argmax of val MAP."""
    train, val = dataset.splits["train"], dataset.splits["val"]
    chosen = baselines.fit_cca(train, val)
    scores = {r: baselines.validation_map(baselines.CCABaseline(r).fit(train.image, train.text),
                                          val)
              for r in baselines.CCA_REGULARISATION_GRID}
    assert chosen.regularisation == max(scores, key=scores.get)
    assert chosen.val_map == pytest.approx(max(scores.values()))


def test_deterministic(dataset, reports):
    assert baselines.evaluate_baselines(dataset) == reports


def test_choice_at_grid_edge_is_logged(dataset, caplog):
    """An under-tuned baseline flatters CM-GAN: a regulariser chosen at the edge of its grid
    says the grid should reach further, so it is logged."""
    train, val = dataset.splits["train"], dataset.splits["val"]
    with caplog.at_level("INFO", logger="models.baselines"):
        chosen = baselines.fit_classifier(train, val, grid=(1e-6, 1e-5))
    assert chosen.C == 1e-5  # almost no fit at all: validation prefers the larger C
    assert any("edge of its grid" in r.getMessage() for r in caplog.records)


def test_refit_on_train_and_val_keeps_the_chosen_setting_and_the_selection_validation(dataset):
    """As a refit CM-GAN: validation picks the setting, train + val fits it, val rows stay the
    selection fit's (the refit model has seen those pairs)."""
    train, val, test = (dataset.splits[s] for s in ("train", "val", "test"))
    plain = baselines.baseline_reports(dataset)
    refit = baselines.baseline_reports(dataset, refit=True)
    both = pooled([train, val])
    by_hand = {"cca": baselines.CCABaseline(baselines.fit_cca(train, val).regularisation).fit(
                   both.image, both.text),
               "classifier": baselines.ClassifierBaseline(
                   baselines.fit_classifier(train, val).C).fit(both.image, both.text, both.label)}
    for name, model in by_hand.items():
        assert refit[name]["val"] == plain[name]["val"]
        assert refit[name]["test"] == retrieval_report(
            *baselines.baseline_embeddings(model, test), test.label)
        assert refit[name]["test"] != plain[name]["test"]
