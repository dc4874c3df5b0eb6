"""Dataset readers: the real Wikipedia files, the feature-folder format, validation errors, demo."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from components.datasets import (SPLITS, DatasetError, Split, load_dataset, make_demo_dataset,
                                 read_feature_folder, read_wikipedia, validate_dataset,
                                 validate_split, write_feature_folder)
from components.datasets.wikipedia import LIST_FILES

TEST_CLASS_COUNTS = [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]
TRAIN_CLASS_COUNTS = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]


# --- Wikipedia -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wiki_dir() -> Path:
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikipedia").resolve()
    assert path.is_dir(), f"Wikipedia data not found at {path}"
    return path


@pytest.fixture(scope="module")
def wiki(wiki_dir):
    return read_wikipedia(wiki_dir)


def _list_column(path: Path, column: int) -> list[str]:
    return [line.split("\t")[column] for line in path.read_text().splitlines()]


def test_wikipedia_shapes_and_types(wiki):
    assert wiki.class_names[:3] == ("art", "biology", "geography")
    assert wiki.num_classes == 10 and wiki.image_dim == 128 and wiki.text_dim == 10
    assert len(wiki.splits["train"]) + len(wiki.splits["val"]) == 2173
    assert len(wiki.splits["test"]) == 693
    for split in wiki.splits.values():
        assert split.image.dtype == np.float32 and split.text.dtype == np.float32
        assert split.label.dtype == np.int64
        assert split.image.shape == (len(split), 128) and split.text.shape == (len(split), 10)


def test_wikipedia_test_split_is_the_standard_one(wiki, wiki_dir):
    test = wiki.splits["test"]
    assert np.bincount(test.label, minlength=10).tolist() == TEST_CLASS_COUNTS
    assert test.ids.tolist() == _list_column(wiki_dir / LIST_FILES["test"], 0)
    mat = scipy.io.loadmat(wiki_dir / "raw_features.mat")
    np.testing.assert_array_equal(test.image, mat["I_te"].astype(np.float32))  # raw, unnormalised
    np.testing.assert_array_equal(test.text, mat["T_te"].astype(np.float32))


def test_wikipedia_val_is_stratified_and_train_plus_val_is_the_standard_train(wiki, wiki_dir):
    train, val = wiki.splits["train"], wiki.splits["val"]
    standard_ids = _list_column(wiki_dir / LIST_FILES["train"], 0)
    assert sorted(train.ids.tolist() + val.ids.tolist()) == sorted(standard_ids)
    assert not set(train.ids) & set(val.ids)
    per_class = np.bincount(train.label, minlength=10) + np.bincount(val.label, minlength=10)
    assert per_class.tolist() == TRAIN_CLASS_COUNTS
    val_counts = np.bincount(val.label, minlength=10)
    assert np.all(np.abs(val_counts - 0.15 * per_class) <= 1)
    # labels stay attached to their pairs: class column of the list, 1..10 -> 0..9
    standard_class = dict(zip(standard_ids, _list_column(wiki_dir / LIST_FILES["train"], 2)))
    assert all(int(standard_class[i]) - 1 == lab for i, lab in zip(val.ids, val.label))


def test_wikipedia_val_split_is_seeded(wiki, wiki_dir):
    again = read_wikipedia(wiki_dir, seed=0)
    other = read_wikipedia(wiki_dir, seed=1)
    assert again.splits["val"].ids.tolist() == wiki.splits["val"].ids.tolist()
    np.testing.assert_array_equal(again.splits["train"].image, wiki.splits["train"].image)
    assert set(other.splits["val"].ids) != set(wiki.splits["val"].ids)


def test_wikipedia_list_and_mat_row_counts_must_agree(wiki_dir, tmp_path):
    copy = tmp_path / "wikipedia"
    shutil.copytree(wiki_dir, copy, ignore=shutil.ignore_patterns("raw_texts", "extra"))
    copy.chmod(0o755)  # the source is read-only; so is the copy
    train_list = copy / LIST_FILES["train"]
    train_list.chmod(0o644)
    lines = train_list.read_text().splitlines()
    train_list.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError) as info:
        read_wikipedia(copy)
    _assert_located(info.value, LIST_FILES["train"], "label", 2172)


def test_load_dataset_dispatches_and_needs_a_data_dir(wiki_dir, tmp_path):
    assert load_dataset("wikipedia", wiki_dir).num_classes == 10
    assert load_dataset("demo", "ignored").name == "demo"
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("wikipedia")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match="missing directory"):
        load_dataset("features", tmp_path / "nowhere")


# --- feature folder --------------------------------------------------------------------------

def _tiny_arrays(rows: int = 8, image_dim: int = 5, text_dim: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.random((rows, image_dim), dtype=np.float32),
            "text": rng.random((rows, text_dim), dtype=np.float32),
            "label": np.arange(rows, dtype=np.int64) % 3,
            "id": np.array([f"item-{seed}-{i}" for i in range(rows)])}


def _write_folder(folder: Path, change: dict | None = None, classes=("a", "b", "c")) -> Path:
    """A valid 3-class folder, with ``change`` = {split: {field: array or None (drop)}} applied."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, split in enumerate(SPLITS):
        arrays = _tiny_arrays(seed=seed)
        arrays.update((change or {}).get(split, {}))
        np.savez(folder / f"{split}.npz", **{k: v for k, v in arrays.items() if v is not None})
    if classes is not None:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return folder


def _assert_located(error: DatasetError, file_name: str, field: str | None, row: int | None):
    message = str(error)
    assert Path(error.path).name == file_name and file_name in message
    assert error.field == field and error.row == row
    if field is not None:
        assert f"'{field}'" in message
    if row is not None:
        assert f"row {row}:" in message


def test_feature_folder_round_trip(tmp_path):
    dataset = make_demo_dataset(num_classes=3, train_per_class=4, val_per_class=2,
                                test_per_class=2, image_dim=6, text_dim=4)
    back = read_feature_folder(write_feature_folder(dataset, tmp_path / "demo"))
    assert back.class_names == dataset.class_names and back.name == "demo"
    for split in SPLITS:
        a, b = dataset.splits[split], back.splits[split]
        for field in ("image", "text", "label", "ids"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert b.image.dtype == np.float32 and b.label.dtype == np.int64


def test_feature_folder_defaults_for_ids_and_class_names(tmp_path):
    change = {s: {"id": None} for s in SPLITS}
    change["test"]["label"] = np.array([4, 0, 0, 0, 0, 0, 0, 0])  # largest label sits in test
    dataset = read_feature_folder(_write_folder(tmp_path / "f", change, classes=None))
    assert dataset.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")
    assert dataset.splits["val"].ids[:2].tolist() == ["val-0", "val-1"]


def test_integral_float_labels_and_float64_features_are_cast(tmp_path):
    arrays = _tiny_arrays()
    folder = _write_folder(tmp_path / "f", {"train": {"label": arrays["label"].astype(np.float64),
                                                      "image": arrays["image"].astype(np.float64)}})
    train = read_feature_folder(folder).splits["train"]
    assert train.label.dtype == np.int64 and train.image.dtype == np.float32
    np.testing.assert_array_equal(train.label, arrays["label"])


def _with(field: str, row_values: dict, base: str = "train", dtype=None) -> np.ndarray:
    """The tiny array of ``field`` for split ``base`` with some rows (or elements) replaced."""
    seed = SPLITS.index(base)
    array = _tiny_arrays(seed=seed)[field]
    array = array.astype(dtype) if dtype is not None else array.copy()
    for index, value in row_values.items():
        array[index] = value
    return array


BAD_INPUTS = {
    # case: (change, file, field, first bad row); a later bad row checks "first" is reported
    "nan": ({"train": {"image": _with("image", {(3, 2): np.nan, (6, 0): np.nan})}},
            "train.npz", "image", 3),
    "inf": ({"val": {"text": _with("text", {(2, 1): np.inf, (5, 1): -np.inf}, "val")}},
            "val.npz", "text", 2),
    "row counts disagree": ({"test": {"label": _with("label", {}, "test")[:7]}},
                            "test.npz", "label", 7),
    "wrong dims in val": ({"val": {"image": np.ones((8, 6), np.float32)}}, "val.npz", "image", 0),
    "label out of range": ({"train": {"label": _with("label", {4: 3, 6: 7})}},
                           "train.npz", "label", 4),
    "negative label": ({"test": {"label": _with("label", {1: -1}, "test")}},
                       "test.npz", "label", 1),
    "non-integer label": ({"train": {"label": _with("label", {5: 2.5, 6: -1.0}, dtype=float)}},
                          "train.npz", "label", 5),
    "duplicate id": ({"val": {"id": _with("id", {4: "item-1-1", 6: "item-1-2"}, "val")}},
                     "val.npz", "id", 4),
    "missing array": ({"train": {"text": None}}, "train.npz", "text", None),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_located_errors(tmp_path, case):
    change, file_name, field, row = BAD_INPUTS[case]
    folder = _write_folder(tmp_path / "f", change)
    with pytest.raises(DatasetError) as info:
        read_feature_folder(folder)
    _assert_located(info.value, file_name, field, row)


def test_missing_file_is_named(tmp_path):
    folder = _write_folder(tmp_path / "f")
    (folder / "test.npz").unlink()
    with pytest.raises(DatasetError, match="missing file") as info:
        read_feature_folder(folder)
    _assert_located(info.value, "test.npz", None, None)


def test_error_message_format():
    error = DatasetError("data/train.npz", "image", "non-finite value nan", row=17)
    assert str(error) == "data/train.npz: field 'image' row 17: non-finite value nan"
    assert isinstance(error, ValueError)


def test_row_count_error_blames_the_odd_field_out():
    a = _tiny_arrays()
    with pytest.raises(DatasetError) as info:
        validate_split("train", "x.npz", a["image"][:6], a["text"], a["label"], a["id"])
    _assert_located(info.value, "x.npz", "image", 6)


def test_validate_dataset_checks_classes_and_splits():
    a = _tiny_arrays()
    split = validate_split("train", "x.npz", a["image"], a["text"], a["label"], a["id"])
    with pytest.raises(DatasetError, match="missing split"):
        validate_dataset("x", {"train": split, "val": split}, ["a", "b", "c"])
    with pytest.raises(DatasetError, match=r"out of range \[0, 2\)"):
        validate_dataset("x", dict.fromkeys(SPLITS, split), ["a", "b"])


# --- demo ------------------------------------------------------------------------------------

def test_demo_is_deterministic_and_seeded():
    a, b, c = make_demo_dataset(seed=3), make_demo_dataset(seed=3), make_demo_dataset(seed=4)
    for split in SPLITS:
        for field in ("image", "text", "label", "ids"):
            np.testing.assert_array_equal(getattr(a.splits[split], field),
                                          getattr(b.splits[split], field))
    assert not np.allclose(a.splits["train"].image, c.splits["train"].image)


def test_demo_shapes_and_classes():
    dataset = make_demo_dataset(num_classes=5, train_per_class=7, val_per_class=3,
                                test_per_class=4, image_dim=12, text_dim=9)
    assert dataset.class_names == tuple(f"class_{i}" for i in range(5))
    for split, per_class in zip(SPLITS, (7, 3, 4)):
        s: Split = dataset.splits[split]
        assert s.image.shape == (5 * per_class, 12) and s.text.shape == (5 * per_class, 9)
        assert np.bincount(s.label, minlength=5).tolist() == [per_class] * 5
        assert np.all(s.text >= 0)


def test_demo_is_learnable_but_not_trivial():
    from sklearn.linear_model import LogisticRegression

    dataset = make_demo_dataset()
    train, test = dataset.splits["train"], dataset.splits["test"]
    for modality in ("image", "text"):
        clf = LogisticRegression(max_iter=1000).fit(getattr(train, modality), train.label)
        accuracy = clf.score(getattr(test, modality), test.label)
        assert 2.0 / dataset.num_classes < accuracy < 0.9, (modality, accuracy)
