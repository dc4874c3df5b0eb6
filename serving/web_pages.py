"""The HTML of the search page (serving/web.py): one page, plain forms, no JavaScript.

Every string from a request, the gallery or the server is escaped (``esc``) before it goes into
HTML. ``assets.extra/gallery_items.jsonl`` of the served version, when present, gives class
names, text snippets and thumbnails.
"""
from __future__ import annotations

import base64
import html
import io
import re
import urllib.parse
from typing import Any, Optional

import numpy as np

from serving.gallery import MODALITIES, Gallery
from serving.web_backend import Hit, Outcome, ServedModel, WebOptions, unsupported_message

MAX_LISTED_ITEMS = 300  # per modality, in the gallery picker

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;
max-width:1100px;padding:0 1em;color:#222} h1{margin-bottom:.1em}
form{border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.6em 0}
form.disabled{opacity:.6} .note{color:#555;font-size:.92em}
.error{background:#fdecea;border:1px solid #e0a0a0;padding:.6em;border-radius:6px}
.grid{display:flex;gap:1.5em;flex-wrap:wrap} .grid>div{flex:1 1 440px}
table{border-collapse:collapse;width:100%} th,td{border:1px solid #ddd;padding:.25em .5em;
vertical-align:middle} td.score{text-align:right;font-variant-numeric:tabular-nums}
tr.relevant{background:#e6f4ea} img.thumb{width:48px;height:48px;image-rendering:pixelated}
.query{background:#f6f8fa;padding:.6em;border-radius:6px} textarea{width:100%}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def thumbnail_data_uri(data: bytes, size: int = 96) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        picture = picture.convert("RGB")
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def text_query_html(text: str) -> str:
    return f"&ldquo;{esc(text)}&rdquo;"


def upload_query_html(image: bytes, filename: Optional[str]) -> str:
    return (f'<img class="thumb" alt="uploaded image" src="{thumbnail_data_uri(image)}">'
            f" {esc(filename or 'upload')}")


def item_html(gallery: Gallery, modality: str, item_id: str, label: int) -> str:
    item = gallery.items.get((modality, item_id)) or {}
    parts = []
    if item.get("thumbnail") and re.fullmatch(r"[A-Za-z0-9+/=\s]+", str(item["thumbnail"])):
        parts.append(f'<img class="thumb" alt="{esc(item_id)}" '
                     f'src="data:image/png;base64,{esc(item["thumbnail"])}">')
    if item.get("text"):
        text = str(item["text"])
        parts.append(f"&ldquo;{esc(text if len(text) <= 140 else text[:137] + '...')}&rdquo;")
    parts.append(f'<span class="id">{esc(item_id)}</span> '
                 f'<span class="note">({esc(gallery.class_name(modality, item_id, label))})'
                 f"</span>")
    return " ".join(parts)


def _results_table(css_id: str, title: str, hits: list[Hit], gallery: Gallery,
                   query_label: Optional[int]) -> str:
    rows = []
    for rank, hit in enumerate(hits, 1):
        relevant = query_label is not None and hit.label == query_label
        link = "/search?" + urllib.parse.urlencode({"kind": "item",
                                                    "item": f"{hit.modality}:{hit.id}"})
        rows.append(
            f'<tr class="hit{" relevant" if relevant else ""}" data-id="{esc(hit.id)}" '
            f'data-modality="{esc(hit.modality)}" data-label="{hit.label}" '
            f'data-score="{hit.score!r}"><td>{rank}</td><td>{esc(hit.modality)}</td>'
            f"<td>{item_html(gallery, hit.modality, hit.id, hit.label)}</td>"
            f'<td class="score">{hit.score:.4f}</td>'
            f'<td><a href="{esc(link)}">search with this</a></td></tr>')
    body = "".join(rows) or '<tr><td colspan="5">no results</td></tr>'
    return (f'<div><h3>{esc(title)}</h3><table id="{esc(css_id)}"><thead><tr><th>#</th>'
            f"<th>modality</th><th>item</th><th>cosine</th><th></th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def render_page(options: WebOptions, served: Optional[ServedModel],
                outcome: Optional[Outcome] = None, error: str = "",
                text_value: str = "", item_value: str = "") -> str:
    parts = [f"<h1>Cross-modal search</h1><p class=\"note\">model <b>{esc(options.model)}"
             f"</b> on <code>{esc(options.server)}</code>"]
    if served is not None:
        sizes = ", ".join(f"{len(served.gallery.ids[m])} {m}s" for m in MODALITIES
                          if m in served.gallery.ids)
        parts.append(f' &middot; version <span id="version">{served.version}</span>'
                     + (f" &middot; gallery: {esc(sizes)}" if sizes else ""))
    parts.append("</p>")
    if error:
        parts.append(f'<div id="error" class="error" role="alert">{esc(error)}</div>')
    if served is not None:
        kinds = {kind: served.signature_for(kind) for kind in ("text", "image", "item")}
        offered = [label for kind, label in (("text", "a sentence"), ("image", "an image"),
                                             ("item", "a gallery item")) if kinds[kind]]
        parts.append(f'<p id="supported">This model answers queries by '
                     f'{esc(", ".join(offered) or "nothing this page can send")}.</p>')
        parts.append(_forms(options, served, kinds, text_value, item_value))
    if outcome is not None:
        other = {"image": "text", "text": "image"}[outcome.query_modality]
        parts.append(f'<h2>Results</h2><div class="query" id="query">Query '
                     f"({esc(outcome.query_modality)}): {outcome.query_html}</div>"
                     f'<div class="grid">'
                     + _results_table("results-other", f"Top {options.top_k} {other}s",
                                      outcome.other, served.gallery, outcome.query_label)
                     + _results_table("results-both", f"Top {options.top_k} of both "
                                      "modalities", outcome.both, served.gallery,
                                      outcome.query_label)
                     + "</div>")
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>CM-GAN search</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")


def _forms(options: WebOptions, served: ServedModel, kinds: dict, text_value: str,
           item_value: str) -> str:
    def state(kind):
        return ("", "") if kinds[kind] else (" disabled", ' class="disabled"')

    disabled, css = state("text")
    text_note = ("" if kinds["text"] else
                 f'<p class="note">{esc(unsupported_message("text", served))}</p>')
    forms = [
        f'<form id="text-form"{css} method="post" action="/search" '
        f'enctype="multipart/form-data"><input type="hidden" name="kind" value="text">'
        f'<label>Type a sentence: <textarea name="text" rows="2"{disabled}>'
        f"{esc(text_value)}</textarea></label>"
        f'<button type="submit"{disabled}>Search images</button>{text_note}</form>']
    disabled, css = state("image")
    image_note = ("" if kinds["image"] else
                  f'<p class="note">{esc(unsupported_message("image", served))}</p>')
    forms.append(
        f'<form id="image-form"{css} method="post" action="/search" '
        f'enctype="multipart/form-data"><input type="hidden" name="kind" value="image">'
        f'<label>Upload an image (JPEG or PNG, at most '
        f"{options.max_upload_bytes / 2**20:.2f} MB): "
        f'<input type="file" name="image" accept="image/*"{disabled}></label> '
        f'<button type="submit"{disabled}>Search texts</button>{image_note}</form>')
    gallery = served.gallery
    disabled, css = state("item")
    options_html, truncated = [], False
    for modality in MODALITIES:
        ids = gallery.ids.get(modality, np.array([], str))
        truncated |= len(ids) > MAX_LISTED_ITEMS
        labels = gallery.labels.get(modality, np.array([], np.int64))
        for item_id, label in list(zip(ids, labels))[:MAX_LISTED_ITEMS]:
            value = f"{modality}:{item_id}"
            selected = " selected" if value == item_value else ""
            options_html.append(
                f'<option value="{esc(value)}"{selected}>{esc(modality)} &middot; '
                f"{esc(item_id)} &middot; {esc(gallery.class_name(modality, item_id, label))}"
                "</option>")
    item_note = ("" if kinds["item"] else
                 f'<p class="note">{esc(unsupported_message("item", served))}</p>')
    if truncated:
        item_note += (f'<p class="note">The first {MAX_LISTED_ITEMS} items of each modality are '
                      "listed; the \"search with this\" links reach any item.</p>")
    forms.append(
        f'<form id="item-form"{css} method="post" action="/search" '
        f'enctype="multipart/form-data"><input type="hidden" name="kind" value="item">'
        f'<label>Or pick a gallery item: <select name="item"{disabled}>'
        f'{"".join(options_html)}</select></label> '
        f'<button type="submit"{disabled}>Search</button>{item_note}</form>')
    return "".join(forms)

