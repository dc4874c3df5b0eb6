"""In-memory feature dataset shared by the readers, the baselines and the trainer (models/ is the
bottom layer; components.datasets re-exports these types)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """Aligned image/text feature pairs of one split (row i of each array is pair i)."""

    image: np.ndarray  # [N, d_img] float32
    text: np.ndarray  # [N, d_txt] float32
    label: np.ndarray  # [N] int64, 0 .. num_classes-1
    ids: np.ndarray  # [N] str

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, index: np.ndarray) -> "Split":
        """The pairs at ``index`` (indices or a boolean mask), keeping the four arrays aligned."""
        return Split(self.image[index], self.text[index], self.label[index], self.ids[index])


def pooled(splits: Sequence[Split]) -> Split:
    """One Split of every pair of ``splits``, in order."""
    return Split(*(np.concatenate([getattr(s, f) for s in splits])
                   for f in ("image", "text", "label", "ids")))


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Names for datasets that ship no class list: ``class_0`` .. ``class_<n-1>``."""
    return tuple(f"class_{i}" for i in range(num_classes))


@dataclasses.dataclass(frozen=True)
class FeatureDataset:
    name: str
    splits: dict[str, Split]
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_dim(self) -> int:
        return int(self.splits["train"].image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.splits["train"].text.shape[1])

    def summary(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (f"{self.name}: {sizes}; image {self.image_dim}-d, text {self.text_dim}-d, "
                f"{self.num_classes} classes")


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask picking ``round(fraction * n)`` random rows of every class (seeded)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = min(int(fraction * len(rows) + 0.5), len(rows) - 1)
        mask[rng.choice(rows, size=count, replace=False)] = True
    return mask
