"""The report's figures as PNG bytes (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

TASK_TITLES = {"i2t": "image -> text", "t2i": "text -> image",
               "all_modal": "all-modal (either -> both)"}
MODALITY_MARKERS = {"image": "o", "text": "^"}
DPI = 100


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def pr_curves_png(curves: dict[str, dict[str, dict]], maps: dict[str, dict[str, float]],
                  labels: dict[str, str]) -> bytes:
    """One panel per task; ``curves[method][task]`` from models.metrics.pr_curves."""
    tasks = [t for t in TASK_TITLES if any(t in c for c in curves.values())]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, per_task in curves.items():
            curve = per_task[task]
            value = maps.get(method, {}).get(task)
            label = labels.get(method, method) + (f" (MAP {value:.3f})" if value is not None
                                                  else "")
            ax.plot(curve["recall"], curve["precision"], label=label)
        ax.set_title(TASK_TITLES[task])
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    return _png(figure)


def training_curves_png(history: Sequence[dict], best_epoch: Optional[int] = None) -> bytes:
    """Discriminator losses, generator losses and validation MAP over epochs."""
    epochs = [r["epoch"] for r in history]
    keys = sorted({k for r in history for k in r})
    panels = [
        ("discriminator losses", [k for k in keys if k.startswith("d_")]),
        ("generator losses", [k for k in keys if k.startswith("g_")]),
        ("validation MAP@all", [k for k in keys if k.startswith("val_") and "@" not in k]),
    ]
    panels = [(title, series) for title, series in panels if series]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.6 * max(len(panels), 1), 3.6),
                                squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for key in series:
            points = [(r["epoch"], r[key]) for r in history if key in r]
            ax.plot(*zip(*points), marker="." if len(points) < 40 else None, label=key)
        if best_epoch and title.startswith("validation"):
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(figure)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Projection on the two leading principal components (numpy SVD)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T


def common_space_png(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], labels: np.ndarray,
                     class_names: Sequence[str]) -> bytes:
    """PCA of each (title, image vectors, text vectors) panel: colour = class, marker =
    modality. Both modalities share one projection per panel, so their overlap is visible."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    classes = sorted(set(int(c) for c in labels))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, (title, image, text) in zip(axes[0], panels):
        points = pca_2d(np.concatenate([image, text]).astype(np.float64))
        n = len(image)
        for modality, part in (("image", points[:n]), ("text", points[n:])):
            for i, c in enumerate(classes):
                mask = labels == c
                ax.scatter(part[mask, 0], part[mask, 1], s=14, alpha=0.7,
                           color=cmap(i % cmap.N), marker=MODALITY_MARKERS[modality],
                           edgecolors="none")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=cmap(i % cmap.N), marker="s", linestyle="",
                          label=class_names[c] if c < len(class_names) else f"class {c}")
               for i, c in enumerate(classes[:20])]
    handles += [plt.Line2D([], [], color="black", marker=m, linestyle="", label=name)
                for name, m in MODALITY_MARKERS.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _png(figure)
