"""The gallery of a search servable version, as stored on disk: written and read here.

A version of the search companion (serving/search_model.py) holds its gallery in two places:

- the SavedModel's variables: per modality ``galleries/<modality>/embeddings_t`` (float32
  [common_dim, G], the L2-normalised embeddings transposed), ``.../ids`` (string [G]) and
  ``.../labels`` (int64 [G]). They are written by saving a module that keeps the
  ``gallery_variables`` of each modality in its ``galleries`` attribute, and read back here
  from the checkpoint without loading the graph;
- ``assets.extra/gallery_items.jsonl``, the gallery for people (web page, report): one JSON
  object per item and modality: id, label, class_name, modality, and where the data is raw a
  text snippet or a base64 PNG thumbnail. TF Serving ignores assets.extra.

TensorFlow is imported only by the functions that need it: the web page imports this module.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Optional

import numpy as np

MODALITIES = ("image", "text")  # models.preprocessing's IMAGE_KEY, TEXT_KEY; a search's targets
GALLERY_ITEMS = "gallery_items.jsonl"
GALLERY_ITEMS_FILE = os.path.join("assets.extra", GALLERY_ITEMS)
VARIABLES_ROOT = "galleries"  # the search module's attribute: modality -> gallery_variables
EMBEDDINGS_T, IDS, LABELS = "embeddings_t", "ids", "labels"  # variables of one modality
_VARIABLE_KEY = re.compile(
    rf"{VARIABLES_ROOT}/(image|text)/({EMBEDDINGS_T}|{IDS}|{LABELS})/\.ATTRIBUTES/")


@dataclasses.dataclass(frozen=True)
class GalleryPart:
    """The encoded items of one modality: L2-normalised embeddings, ids, class labels."""

    embeddings: np.ndarray  # float32 [G, common_dim]
    ids: np.ndarray  # str [G]
    labels: np.ndarray  # int64 [G]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


# --------------------------------------------------------------------------- writing
def gallery_variables(part: GalleryPart):
    """One modality's part as a ``tf.Module`` of variables (``EMBEDDINGS_T``, ``IDS``,
    ``LABELS``); the search module keeps one per modality under ``VARIABLES_ROOT``."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    variables = tf.Module()
    # Stored transposed: [common_dim, G] makes the query matmul a plain row-major product.
    stored = {EMBEDDINGS_T: np.ascontiguousarray(part.embeddings.T, np.float32),
              IDS: part.ids.astype(bytes), LABELS: part.labels.astype(np.int64)}
    for name, value in stored.items():
        setattr(variables, name, tf.Variable(value, trainable=False, name=name))
    return variables


def variable_tensors(variables) -> tuple:
    """(embeddings_t, ids, labels) of a module made by ``gallery_variables`` (or restored)."""
    return tuple(getattr(variables, name) for name in (EMBEDDINGS_T, IDS, LABELS))


def write_gallery_items(export_dir: str, items: Iterable[dict]) -> str:
    """``assets.extra/gallery_items.jsonl`` (see the module docstring)."""
    path = os.path.join(export_dir, GALLERY_ITEMS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- reading
def read_gallery_items(version_dir: str) -> list[dict]:
    """The gallery description of a search servable version ([] when it has none)."""
    path = os.path.join(version_dir, GALLERY_ITEMS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_gallery_variables(version_dir: str) -> dict[str, GalleryPart]:
    """The gallery parts held in a search SavedModel's variables (no graph is loaded); a
    modality missing any of its variables is left out. Raises OSError, ValueError or
    ``tf.errors.OpError`` when the checkpoint cannot be read."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    values = {}
    for key in reader.get_variable_to_shape_map():
        match = _VARIABLE_KEY.match(key)
        if match:
            values[match.groups()] = reader.get_tensor(key)
    parts = {}
    for modality in MODALITIES:
        if all((modality, name) in values for name in (EMBEDDINGS_T, IDS, LABELS)):
            parts[modality] = GalleryPart(
                embeddings=np.ascontiguousarray(values[(modality, EMBEDDINGS_T)].T),
                ids=np.array([i.decode() for i in values[(modality, IDS)]], dtype=str),
                labels=np.asarray(values[(modality, LABELS)], np.int64))
    return parts


@dataclasses.dataclass
class Gallery:
    """The served version's gallery: per modality ids, labels, embeddings (may be missing) and
    the display fields of gallery_items.jsonl."""

    ids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    items: dict[tuple[str, str], dict] = dataclasses.field(default_factory=dict)
    problem: str = ""  # why item queries are unavailable, if they are

    def index(self, modality: str, item_id: str) -> Optional[int]:
        if modality not in self.ids:
            return None
        found = np.flatnonzero(self.ids[modality] == item_id)
        return int(found[0]) if found.size else None

    def class_name(self, modality: str, item_id: str, label: int) -> str:
        item = self.items.get((modality, item_id)) or {}
        return str(item.get("class_name") or f"class {label}")


def load_gallery(version_dir: str) -> Gallery:
    """Everything a search servable version stores of its gallery; what cannot be read is
    said in ``problem`` (a listing without embeddings is still listed)."""
    gallery = Gallery()
    for item in read_gallery_items(version_dir):
        gallery.items[(str(item.get("modality")), str(item.get("id")))] = item
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        for modality, part in read_gallery_variables(version_dir).items():
            gallery.ids[modality] = part.ids
            gallery.labels[modality] = part.labels
            gallery.embeddings[modality] = part.embeddings
        if not gallery.ids:
            gallery.problem = "the served version holds no gallery variables this page knows"
    except (OSError, ValueError, tf.errors.OpError) as error:
        gallery.problem = f"the gallery of {version_dir} could not be read ({error})"
    if not gallery.ids and gallery.items:  # a listing without embeddings: still show it
        for modality in MODALITIES:
            rows = [(i, int(it.get("label", -1))) for (m, i), it in gallery.items.items()
                    if m == modality]
            gallery.ids[modality] = np.array([r[0] for r in rows], dtype=str)
            gallery.labels[modality] = np.array([r[1] for r in rows], np.int64)
    return gallery
