"""The embedded raw demo: a seeded folder of small PNG images with captions, in pairs.csv format.

Each class is a (shape, colour, texture) triple, and classes share parts: two classes are red,
two are circles, two are striped, and so on, so neither one attribute nor one modality settles
the class. Images add a noisy background, hue/brightness jitter, scale and position jitter,
rotation, a distractor shape in another class's colour and a random occluding block, plus pixel
noise. Captions come from templates with synonyms, varied word order and distractor words; some
describe only part of the object, a few nothing useful, and some mention the distractor shape.
The same seed always writes byte-identical files (Pillow PNGs carry no timestamps).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from components.datasets.raw_pairs import CLASSES_FILE, PAIRS_FILE

IMAGES_DIR = "images"

COLOURS = {  # base RGB; jittered per image
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60),
    "yellow": (215, 195, 40), "purple": (130, 50, 170), "orange": (230, 120, 30),
}
# (name, shape, colour, texture): each attribute is shared with at least one other class
CLASSES = (
    ("red_circle", "circle", "red", "plain"),
    ("red_square", "square", "red", "striped"),
    ("blue_square", "square", "blue", "plain"),
    ("blue_triangle", "triangle", "blue", "dotted"),
    ("green_triangle", "triangle", "green", "plain"),
    ("green_circle", "circle", "green", "striped"),
    ("purple_diamond", "diamond", "purple", "dotted"),
    ("orange_diamond", "diamond", "orange", "striped"),
)
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round shape", "ring-like blob", "dot"),
    "square": ("square", "box", "block", "tile", "rectangle"),
    "triangle": ("triangle", "wedge", "pointed shape", "arrowhead"),
    "diamond": ("diamond", "rhombus", "tilted square", "lozenge"),
}
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet", "reddish"),
    "blue": ("blue", "navy", "azure", "bluish"),
    "green": ("green", "emerald", "greenish", "olive"),
    "yellow": ("yellow", "golden", "mustard"),
    "purple": ("purple", "violet", "mauve", "plum"),
    "orange": ("orange", "amber", "tangerine", "rust coloured"),
}
TEXTURE_WORDS = {
    "plain": ("plain", "solid", "flat", "uniform"),
    "striped": ("striped", "banded", "lined", "with stripes"),
    "dotted": ("dotted", "spotted", "speckled", "with dots"),
}
OPENERS = ("", "a photo of", "an image showing", "picture:", "here we see", "this is",
           "a small drawing of", "close-up of", "sketch of")
DISTRACTORS = ("blurry", "noisy", "on a grey background", "slightly off centre", "low quality",
               "in the corner", "partly hidden", "tiny", "large", "old scan", "cropped")
UNINFORMATIVE = ("an image", "a picture of something", "not sure what this is",
                 "some object on a background", "a thumbnail")


def write_raw_demo(folder: str | os.PathLike, seed: int = 0, *, image_size: int = 32,
                   train_per_class: int = 120, val_per_class: int = 30,
                   test_per_class: int = 40) -> Path:
    """Write ``pairs.csv``, ``classes.txt`` and ``images/*.png`` under ``folder``; return it."""
    folder = Path(folder)
    (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class),
                             ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
        for label in labels:
            item_id = f"demo-{len(rows):05d}"
            image, distractor = _draw(rng, CLASSES[label], image_size)
            path = f"{IMAGES_DIR}/{item_id}.png"
            (folder / path).write_bytes(_png(image))
            rows.append((item_id, path, _caption(rng, CLASSES[label], distractor),
                         CLASSES[label][0], split))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("id", "image", "text", "label", "split"))
    writer.writerows(rows)
    (folder / PAIRS_FILE).write_text(out.getvalue(), encoding="utf-8")
    (folder / CLASSES_FILE).write_text("".join(f"{c[0]}\n" for c in CLASSES))
    return folder


def _png(image: np.ndarray) -> bytes:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float,
                angle: float) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy), rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    if shape == "circle":
        return u * u + v * v <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= radius * 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= radius
    # triangle pointing "up" in the rotated frame: below the two slanted edges, above the base
    return (v <= radius * 0.6) & (v >= -radius + 1.7 * np.abs(u))


def _texture(texture: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator):
    """Multiplicative brightness pattern in [0.45, 1]."""
    if texture == "striped":
        period, angle = rng.uniform(3.0, 5.0), rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        return np.where(np.floor(phase) % 2 == 0, 1.0, 0.45)
    if texture == "dotted":
        period = rng.uniform(3.5, 5.0)
        dx, dy = (xx % period) - period / 2, (yy % period) - period / 2
        return np.where(dx * dx + dy * dy <= (period / 3.2) ** 2, 0.45, 1.0)
    return np.ones_like(xx)


def _jittered(rng: np.random.Generator, colour: str, spread: float = 28.0) -> np.ndarray:
    return np.clip(np.array(COLOURS[colour], float) + rng.normal(0, spread, 3), 0, 255)


def _draw(rng: np.random.Generator, spec: tuple[str, str, str, str], size: int):
    """One noisy image of class ``spec``; also returns the distractor (shape, colour) or None."""
    _, shape, colour, texture = spec
    yy, xx = np.mgrid[0:size, 0:size].astype(float) + 0.5
    background = rng.uniform(60, 190) + rng.normal(0, 12, 3)
    image = np.ones((size, size, 3)) * background
    image += rng.normal(0, 10, (size, size, 1)) * np.linspace(0.5, 1.5, size)[:, None, None]
    distractor = None
    if rng.random() < 0.45:  # a small shape in another class's colour, somewhere else
        other = CLASSES[rng.integers(len(CLASSES))]
        d_shape, d_colour = other[1], other[2]
        mask = _shape_mask(d_shape, xx, yy, rng.uniform(0, size), rng.uniform(0, size),
                           size * rng.uniform(0.1, 0.2), rng.uniform(0, np.pi))
        image[mask] = _jittered(rng, d_colour)
        distractor = (d_shape, d_colour)
    radius = size * rng.uniform(0.18, 0.38)
    cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
    mask = _shape_mask(shape, xx, yy, cx, cy, radius, rng.uniform(0, 2 * np.pi))
    pattern = _texture(texture, xx, yy, rng)[..., None]
    image = np.where(mask[..., None], _jittered(rng, colour) * pattern, image)
    if rng.random() < 0.5:  # occluding block
        w, h = rng.integers(size // 6, size // 2, 2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        image[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    image *= rng.uniform(0.7, 1.2)  # exposure
    image += rng.normal(0, 14, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), distractor


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[rng.integers(len(words))]


def _caption(rng: np.random.Generator, spec: tuple[str, str, str, str], distractor) -> str:
    """Templated, noisy caption: random subset of attributes, synonyms, order and distractors."""
    _, shape, colour, texture = spec
    if rng.random() < 0.08:
        return _pick(rng, UNINFORMATIVE)
    keep = rng.random(3) < (0.75, 0.8, 0.55)  # colour, shape, texture
    if not keep.any():
        keep[rng.integers(3)] = True
    adjectives = [_pick(rng, w[a]) for w, a, k in ((COLOUR_WORDS, colour, keep[0]),
                                                  (TEXTURE_WORDS, texture, keep[2])) if k]
    rng.shuffle(adjectives)
    noun = _pick(rng, SHAPE_WORDS[shape]) if keep[1] else _pick(rng, ("shape", "object",
                                                                     "thing", "figure"))
    words = [_pick(rng, OPENERS), " ".join(adjectives), noun]
    if rng.random() < 0.5:
        words.insert(rng.integers(1, len(words) + 1), _pick(rng, DISTRACTORS))
    if distractor is not None and rng.random() < 0.4:
        words.append(f"next to a {_pick(rng, COLOUR_WORDS[distractor[1]])} "
                     f"{_pick(rng, SHAPE_WORDS[distractor[0]])}")
    if rng.random() < 0.3:
        words.append(_pick(rng, DISTRACTORS))
    return " ".join(w for w in words if w).strip()
