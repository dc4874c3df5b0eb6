"""The report as one self-contained HTML page (inline CSS, images as base64 data URIs).

Every piece of text that comes from data (ids, class names, texts, reasons, paths) goes through
``html.escape``. MAP cells carry the evaluator's exact value in ``data-value`` so a reader (or a
test) can compare the page with retrieval_metrics.json without rounding.
"""
from __future__ import annotations

import base64
import datetime
import io
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from models.metrics import METHOD_LABELS
from serving.web_pages import esc

MAP_KEYS = ("i2t", "t2i", "mean", "all_modal")
MAP_TITLES = {"i2t": "I&rarr;T", "t2i": "T&rarr;I", "mean": "mean", "all_modal": "all-modal"}
THUMBNAIL_SIZE = 64

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.candidate td{font-weight:600}
.blessed{color:#176f2c;font-weight:600} .not-blessed{color:#a31515;font-weight:600}
img.plot{max-width:100%} img.thumb{width:64px;height:64px;image-rendering:pixelated;
vertical-align:middle} .relevant{background:#e6f4ea} .irrelevant{background:#fdecea}
.mark{font-weight:700} .muted{color:#666} code{background:#f4f4f4;padding:0 .2em}
.query{margin:1em 0;padding:.5em;border:1px solid #eee} .snippet{max-width:46em}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, css_class: str = "plot") -> str:
    return f'<img class="{css_class}" alt="{esc(alt)}" src="{data_uri(png)}">'


def image_thumbnail(value: Optional[bytes], image_size: Optional[int],
                    size: int = THUMBNAIL_SIZE) -> Optional[bytes]:
    """PNG thumbnail of an example's image feature: raw uint8 HWC RGB pixels of
    ``image_size``^2 x 3 bytes, or an encoded image; None when it is neither."""
    if not value:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        if image_size and len(value) == int(image_size) ** 2 * 3:
            picture = Image.fromarray(np.frombuffer(value, np.uint8).reshape(
                int(image_size), int(image_size), 3), "RGB")
        else:
            picture = Image.open(io.BytesIO(value)).convert("RGB")
    except (UnidentifiedImageError, ValueError, OSError):
        return None
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def map_table(methods: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: method x split; columns: MAP@all of each task and the MAP@k ones present."""
    at_k = sorted({k for m in methods.values() for s in m.values() for k in s if "@" in k},
                  key=lambda k: (int(k.split("@")[1]), MAP_KEYS.index(k.split("@")[0])
                                 if k.split("@")[0] in MAP_KEYS else 9))
    columns = [*MAP_KEYS, *at_k]
    titles = [MAP_TITLES[c] if c in MAP_TITLES else
              f"{MAP_TITLES.get(c.split('@')[0], esc(c.split('@')[0]))}@{esc(c.split('@')[1])}"
              for c in columns]
    order = [m for m in METHOD_LABELS if m in methods] + sorted(set(methods) - set(METHOD_LABELS))
    lines = []
    for method in order:
        for split in sorted(methods[method], key=lambda s: (s != "val", s != "test", s)):
            cells = [f"<td>{esc(METHOD_LABELS.get(method, method))}</td>", f"<td>{esc(split)}</td>"]
            for column in columns:
                value = methods[method][split].get(column)
                cells.append(
                    '<td class="num map" data-method="{}" data-split="{}" data-metric="{}" '
                    'data-value="{}">{}</td>'.format(
                        esc(method), esc(split), esc(column),
                        esc(repr(float(value))) if value is not None else "",
                        f"{value:.4f}" if value is not None else "&ndash;"))
            row_class = ' class="candidate"' if method == "cmgan" else ""
            lines.append(f'<tr{row_class}>{"".join(cells)}</tr>')
    head = "".join(f"<th>{t}</th>" for t in ["method", "split", *titles])
    return (f'<table id="map-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def key_value_table(pairs: Iterable[tuple[str, Any]], css_id: str = "") -> str:
    """Two columns, the key as a row header; ``data-key`` lets a reader find a row."""
    rows = "".join(f'<tr data-key="{esc(k)}"><th>{esc(k)}</th><td>{esc(v)}</td></tr>'
                   for k, v in pairs)
    attr = f' id="{esc(css_id)}"' if css_id else ""
    return f"<table{attr}><tbody>{rows}</tbody></table>"


def _item_cell(data, split: str, index: int, modality: str) -> str:
    """A query or result: thumbnail / text snippet when the examples hold raw data, plus the
    id and class name always."""
    examples = data.examples[split]
    label = int(examples.labels[index])
    caption = (f'<span class="item-id">{esc(examples.ids[index])}</span> '
               f'<span class="muted">({esc(data.class_name(label))})</span>')
    if modality == "image":
        thumb = image_thumbnail(examples.image_values[index], data.data.get("image_size"))
        if thumb:
            return img(thumb, f"image {examples.ids[index]}", "thumb") + " " + caption
        return "image " + caption
    text = examples.text_values[index]
    if text:
        snippet = text if len(text) <= 160 else text[:157] + "..."
        return f'<span class="snippet">&ldquo;{esc(snippet)}&rdquo;</span><br>{caption}'
    return "text " + caption


def example_queries(data, pairs: Sequence[tuple[str, int, np.ndarray, np.ndarray]],
                    direction: str) -> str:
    """``pairs``: (split, query index, ranked gallery indices, their scores)."""
    query_modality, target = ("image", "text") if direction == "i2t" else ("text", "image")
    labels = data.examples["test"].labels
    parts = []
    for split, q, ranked, scores in pairs:
        rows = []
        for rank, (g, score) in enumerate(zip(ranked, scores), 1):
            relevant = bool(labels[g] == labels[q])
            mark = "&#10003; relevant" if relevant else "&#10007;"
            rows.append(f'<tr class="{"relevant" if relevant else "irrelevant"}">'
                        f"<td>{rank}</td><td>{_item_cell(data, split, int(g), target)}</td>"
                        f'<td class="num">{score:.4f}</td><td class="mark">{mark}</td></tr>')
        body = "".join(rows)
        parts.append(
            f'<div class="query {direction}"><p><b>query ({query_modality}):</b> '
            f'{_item_cell(data, split, q, query_modality)}</p>'
            f'<table><thead><tr><th>rank</th><th>{target}</th><th>cosine</th>'
            f'<th>same class</th></tr></thead><tbody>{body}</tbody></table></div>')
    return "".join(parts)


def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "") -> str:
    """(id, heading, body html) sections under a table of contents."""
    toc = "".join(f'<li><a href="#{esc(i)}">{esc(h)}</a></li>' for i, h, _ in sections)
    body = "".join(f'<section id="{esc(i)}"><h2>{esc(h)}</h2>{b}</section>'
                   for i, h, b in sections)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"muted\">{esc(subtitle)} &middot; generated "
            f"{generated}</p><nav><ol>{toc}</ol></nav>{body}</body></html>")
