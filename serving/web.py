"""A small search page in front of a model server: ``cmgan web``.

Stdlib ``http.server`` (one thread per request) renders plain HTML forms, so the page works
without JavaScript. Queries go over gRPC (``serving.client.ServingClient``) to the search
companion ``<model>-search``; which query kinds are offered follows its signatures
(GetModelMetadata):

- a sentence: ``search_text_string`` (or ``search_text`` when it takes strings);
- an uploaded image: ``search_image_bytes`` (JPEG/PNG; other formats Pillow reads are re-encoded
  as PNG here; size capped by ``max_upload_bytes``);
- a gallery item: ``search_embedding`` with the item's stored embedding, read from the served
  version's variables under ``model_base_path`` (works for every model, features-only too).

Each query shows the top-k items of the other modality and of both modalities (the two
galleries' top-k merged by cosine). ``assets.extra/gallery_items.jsonl`` of the served version,
when present, gives class names, text snippets and thumbnails. Every string from a request,
the gallery or the server is escaped before it goes into HTML.
"""
from __future__ import annotations

import base64
import dataclasses
import email.message
import email.parser
import email.policy
import html
import http.server
import io
import json
import logging
import os
import re
import signal
import socket
import threading
import urllib.parse
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

MODALITIES = ("image", "text")
GALLERY_ITEMS_FILE = os.path.join("assets.extra", "gallery_items.jsonl")
MAX_LISTED_ITEMS = 300  # per modality, in the gallery picker
FORM_OVERHEAD_BYTES = 64 << 10  # multipart headers and the small fields around an upload
DRAIN_LIMIT_BYTES = 64 << 20  # a bigger refused body is not read: the connection is closed
IMAGE_FORMATS = ("JPEG", "PNG")
MAX_FORM_PARTS = 16  # the page's forms have at most 3 fields; 60,000 tiny parts cost 25 s CPU
LISTEN_BACKLOG = 128  # socketserver's default of 5 drops connections under a small burst
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # models.image_decoding's (this module avoids TF)
_GALLERY_KEY = re.compile(r"galleries/(image|text)/(embeddings_t|ids|labels)/\.ATTRIBUTES/")


class QueryError(Exception):
    """A problem the user can fix; shown on the page with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class WebOptions:
    server: str = "127.0.0.1:8500"
    model: str = "cmgan"
    model_base_path: str = "serving_models"  # for the gallery listing and item embeddings
    host: str = "127.0.0.1"
    port: int = 8080
    top_k: int = 10
    max_upload_bytes: int = 5 << 20
    timeout_s: float = 10.0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # uploads, from the header, before decoding
    connection_timeout_s: float = 30.0  # a client silent this long (half-open, slow) is dropped


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
    """Reads the gallery variables of a search SavedModel (no graph is loaded) and the
    optional gallery_items.jsonl beside them."""
    gallery = Gallery()
    items_path = os.path.join(version_dir, GALLERY_ITEMS_FILE)
    if os.path.exists(items_path):
        with open(items_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    item = json.loads(line)
                    gallery.items[(str(item.get("modality")), str(item.get("id")))] = item
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
        values: dict[tuple[str, str], Any] = {}
        for key in reader.get_variable_to_shape_map():
            match = _GALLERY_KEY.match(key)
            if match:
                values[match.groups()] = reader.get_tensor(key)
        for modality in MODALITIES:
            if all((modality, k) in values for k in ("embeddings_t", "ids", "labels")):
                gallery.ids[modality] = np.array(
                    [i.decode() for i in values[(modality, "ids")]], dtype=str)
                gallery.labels[modality] = np.asarray(values[(modality, "labels")], np.int64)
                gallery.embeddings[modality] = np.ascontiguousarray(
                    values[(modality, "embeddings_t")].T)
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


@dataclasses.dataclass
class ServedModel:
    """What the search companion's current version offers."""

    version: int
    signatures: dict[str, tuple[str, int]]  # search signature -> (query input key, dtype enum)
    gallery: Gallery
    encoders: tuple[str, ...] = ()  # encode_* signatures the search companion also has

    def signature_for(self, kind: str) -> Optional[str]:
        """The signature answering a query kind (text | image | item), or None."""
        import tensorflow as tf

        string = tf.string.as_datatype_enum
        if kind == "text":
            for name in ("search_text_string", "search_text"):
                if name in self.signatures and self.signatures[name][1] == string:
                    return name
            return None
        if kind == "image":
            return "search_image_bytes" if "search_image_bytes" in self.signatures else None
        if kind == "item":
            return ("search_embedding" if "search_embedding" in self.signatures
                    and self.gallery.embeddings else None)
        return None


@dataclasses.dataclass
class Hit:
    id: str
    label: int
    score: float
    modality: str


@dataclasses.dataclass
class Outcome:
    query_modality: str
    query_html: str  # already escaped
    query_label: Optional[int]
    other: list[Hit]
    both: list[Hit]
    version: int


class SearchBackend:
    """gRPC calls and the per-version state (signatures, gallery) behind the page."""

    def __init__(self, options: WebOptions):
        from serving.client import ServingClient
        from serving.config_files import search_model_name

        self.options = options
        self.search_model = search_model_name(options.model)
        self.client = ServingClient(options.server, timeout_s=options.timeout_s)
        self._lock = threading.Lock()
        self._served: Optional[ServedModel] = None

    def served(self) -> ServedModel:
        """The highest AVAILABLE version's signatures and gallery (re-read when it changes)."""
        available = [v for v, s in self.client.status(self.search_model).items()
                     if s == "AVAILABLE"]
        if not available:
            raise QueryError(f"{self.search_model} has no available version on "
                             f"{self.options.server} yet", 503)
        version = max(available)
        with self._lock:
            if self._served is None or self._served.version != version:
                metadata = self.client.signatures(self.search_model, version)
                signatures = {}
                for name, signature in metadata.items():
                    if name.startswith("search_"):
                        keys = [k for k in signature.inputs if k not in ("target", "k")]
                        if len(keys) == 1:
                            signatures[name] = (keys[0], signature.inputs[keys[0]].dtype)
                gallery = load_gallery(os.path.join(self.options.model_base_path,
                                                    self.search_model, str(version)))
                encoders = tuple(sorted(n for n in metadata if n.startswith("encode_")))
                self._served = ServedModel(version, signatures, gallery, encoders)
            return self._served

    def _search(self, served: ServedModel, signature: str, query, target: str,
                k: int) -> list[Hit]:
        key, _ = served.signatures[signature]
        outputs, _ = self.client.predict(
            self.search_model, signature,
            {key: query, "target": np.array(target.encode()), "k": np.int32(k)},
            version=served.version)
        return [Hit(i.decode() if isinstance(i, bytes) else str(i), int(label), float(score),
                    target)
                for i, label, score in zip(outputs["ids"][0], outputs["labels"][0],
                                           outputs["scores"][0])]

    def query(self, kind: str, value, query_modality: str, query_html: str,
              query_label: Optional[int] = None,
              exclude: Optional[tuple[str, str]] = None) -> Outcome:
        """Top-k of the other modality and of both; ``exclude`` (modality, id) drops the query
        item itself from the merged list."""
        served = self.served()
        signature = served.signature_for(kind)
        if signature is None:
            raise QueryError(unsupported_message(kind, served))
        k = self.options.top_k
        other = {"image": "text", "text": "image"}[query_modality]
        if (kind == "image" and "encode_image_bytes" in served.encoders
                and "search_embedding" in served.signatures):
            # Decode (and encode) the upload once, then search both galleries with the vector.
            value, signature = self._encode_image_bytes(served, value), "search_embedding"
        per_target = {t: self._search(served, signature, value, t, k + (exclude is not None))
                      for t in MODALITIES}
        both = sorted((h for t in MODALITIES for h in per_target[t]
                       if (h.modality, h.id) != exclude), key=lambda h: -h.score)[:k]
        return Outcome(query_modality, query_html, query_label,
                       [h for h in per_target[other] if (h.modality, h.id) != exclude][:k],
                       both, served.version)

    def _encode_image_bytes(self, served: ServedModel, images: list) -> np.ndarray:
        outputs, _ = self.client.predict(
            self.search_model, "encode_image_bytes",
            {"image_bytes": np.array(images, dtype=object)}, version=served.version)
        return np.asarray(outputs["embedding"], np.float32)

    def close(self) -> None:
        self.client.close()


def unsupported_message(kind: str, served: ServedModel) -> str:
    if kind == "item":
        return ("Gallery item queries are not available: "
                + (served.gallery.problem or "the model has no search_embedding signature"))
    what = {"text": "Sentence", "image": "Image"}[kind]
    return (f"{what} queries are not supported by this model: it was trained on feature "
            f"vectors, not raw {'text' if kind == 'text' else 'images'}. Pick a gallery "
            "item instead, or serve a model trained on raw inputs.")


# --------------------------------------------------------------------------- uploads
def check_image(data: bytes, limit: int,
                max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS) -> bytes:
    """The upload as JPEG or PNG bytes, or a QueryError saying what is wrong with it.

    Width and height come from the header first: a small file may declare a huge image, and
    nothing here or on the server decodes more than ``max_pixels`` pixels."""
    from PIL import Image

    if not data:
        raise QueryError("No image was uploaded: choose a JPEG or PNG file.")
    if len(data) > limit:
        raise QueryError(f"The image is too large: {len(data) / 2**20:.2f} MB; the limit is "
                         f"{limit / 2**20:.2f} MB.", 413)
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
    except Image.DecompressionBombError:
        width = height = 2**31 - 1
    except Exception:  # pylint: disable=broad-except  (not an image: reported below)
        width = height = 0
    if max_pixels and width * height > max_pixels:
        raise QueryError(f"The image is too large: {width}x{height} pixels; the limit is "
                         f"{max_pixels} pixels (image_too_large).", 413)
    try:
        with Image.open(io.BytesIO(data)) as picture:
            image_format = picture.format
            picture.verify()
        if image_format in IMAGE_FORMATS:
            return data
        with Image.open(io.BytesIO(data)) as picture:  # e.g. GIF, BMP, WebP: send a PNG
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue()
    except Exception as error:  # pylint: disable=broad-except  (Pillow raises many kinds)
        log.info("rejected upload: %s", error)
        raise QueryError("The uploaded file is not an image that can be read "
                         "(JPEG or PNG expected).") from None


def thumbnail_data_uri(data: bytes, size: int = 96) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        picture = picture.convert("RGB")
        picture.thumbnail((size, size))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[Optional[str], bytes]]:
    """Form field name -> (file name or None, value bytes).

    The parts are counted before the (quadratic-ish) email parser sees the body: a form of this
    page has a handful of fields, so more than MAX_FORM_PARTS is refused."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise QueryError("The form could not be read (multipart/form-data without a boundary).")
    parts = body.count(b"--" + boundary.encode("latin-1", "replace"))
    if parts > MAX_FORM_PARTS + 1:  # n parts: n delimiters and the closing one
        raise QueryError(f"The form has too many parts ({parts - 1}); at most "
                         f"{MAX_FORM_PARTS} are accepted.")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise QueryError("The form could not be read (expected multipart/form-data).")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


# --------------------------------------------------------------------------- HTML
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


def _item_html(gallery: Gallery, modality: str, item_id: str, label: int) -> str:
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
            f"<td>{_item_html(gallery, hit.modality, hit.id, hit.label)}</td>"
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


# --------------------------------------------------------------------------- HTTP
class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "cmgan-web"
    backend: SearchBackend  # set on the subclass made by make_server
    options: WebOptions

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        log.info("%s %s", self.address_string(), format % args)

    def handle(self):
        """A client that goes away or stays silent past the connection timeout costs one log
        line, not a traceback per connection."""
        try:
            super().handle()
        except (ConnectionError, socket.timeout) as error:
            log.info("%s dropped: %s", self.client_address[0], type(error).__name__)
            self.close_connection = True

    def _send(self, status: int, page: str) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                         "form-action 'self'; frame-ancestors 'none'")
        self.send_header("X-Frame-Options", "DENY")  # browsers without frame-ancestors
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _page(self, status: int = 200, **kwargs) -> None:
        """The page with ``status``; a model server that is down makes it 503, unless the
        request itself was already refused (4xx: the user's to fix first)."""
        served = None
        try:
            served = self.backend.served()
        except QueryError as error:
            kwargs.setdefault("error", str(error))
            status = status if 400 <= status < 500 else max(status, error.status)
        except Exception as error:  # pylint: disable=broad-except
            kwargs.setdefault("error", server_error_message(self.options, error))
            status = status if 400 <= status < 500 else max(status, 503)
        self._send(status, render_page(self.options, served, **kwargs))

    def do_GET(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            return self._page()
        if url.path == "/search":
            fields = {k: (None, v[0].encode()) for k, v in
                      urllib.parse.parse_qs(url.query).items()}
            return self._search(fields)
        return self._send(404, render_page(self.options, None, error="No such page."))

    def do_POST(self):  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != "/search":
            return self._send(404, render_page(self.options, None, error="No such page."))
        declared = self.headers.get("Content-Length")
        if declared is None or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # the body (if any) is never read
            return self._send(411, render_page(self.options, None,
                                               error="The request has no length."))
        if not declared.strip().isdigit():  # negative ("-1" read to end of stream), junk
            self.close_connection = True
            return self._send(400, render_page(
                self.options, None, error="The request's Content-Length is not a length."))
        length = int(declared)
        if length > self.options.max_upload_bytes + FORM_OVERHEAD_BYTES:
            message = (f"The upload is too large: {length / 2**20:.2f} MB; the limit is "
                       f"{self.options.max_upload_bytes / 2**20:.2f} MB.")
            if length <= DRAIN_LIMIT_BYTES:  # read it, so the browser gets to see the answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            return self._page(413, error=message)
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        try:
            if content_type.startswith("multipart/form-data"):
                fields = parse_multipart(content_type, body)
            else:
                fields = {k: (None, v[0].encode()) for k, v in
                          urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        except QueryError as error:
            return self._page(error.status, error=str(error))
        return self._search(fields)

    def _search(self, fields: dict[str, tuple[Optional[str], bytes]]) -> None:
        kind = fields.get("kind", (None, b""))[1].decode("utf-8", "replace")
        text_value = ""
        item_value = fields.get("item", (None, b""))[1].decode("utf-8", "replace")
        try:
            if kind == "text":
                text_value = fields.get("text", (None, b""))[1].decode("utf-8", "replace")
                if not text_value.strip():
                    raise QueryError("Type a sentence first.")
                outcome = self.backend.query(
                    "text", [text_value.encode("utf-8")], "text",
                    f"&ldquo;{esc(text_value)}&rdquo;")
            elif kind == "image":
                filename, data = fields.get("image", (None, b""))
                image = check_image(data, self.options.max_upload_bytes,
                                    self.options.max_image_pixels)
                outcome = self.backend.query(
                    "image", [image], "image",
                    f'<img class="thumb" alt="uploaded image" src="{thumbnail_data_uri(image)}">'
                    f" {esc(filename or 'upload')}")
            elif kind == "item":
                outcome = self._item_query(item_value)
            else:
                raise QueryError("Unknown query kind.")
        except QueryError as error:
            return self._page(error.status, error=str(error), text_value=text_value,
                              item_value=item_value)
        except Exception as error:  # pylint: disable=broad-except  (gRPC, server down, ...)
            log.warning("query failed", exc_info=True)
            return self._page(502, error=server_error_message(self.options, error),
                              text_value=text_value, item_value=item_value)
        return self._page(outcome=outcome, text_value=text_value, item_value=item_value)

    def _item_query(self, value: str) -> Outcome:
        modality, _, item_id = value.partition(":")
        served = self.backend.served()
        if served.signature_for("item") is None:
            raise QueryError(unsupported_message("item", served))
        index = served.gallery.index(modality, item_id) if modality in MODALITIES else None
        if index is None:
            raise QueryError(f"No {modality or 'gallery'} item {item_id!r} in the gallery.", 404)
        label = int(served.gallery.labels[modality][index])
        embedding = served.gallery.embeddings[modality][index][None, :]
        return self.backend.query(
            "item", embedding, modality,
            _item_html(served.gallery, modality, item_id, label), query_label=label,
            exclude=(modality, item_id))


def server_error_message(options: WebOptions, error: Exception) -> str:
    import grpc

    if isinstance(error, grpc.RpcError):
        return (f"The model server at {options.server} answered {error.code().name}: "
                f"{error.details()}")
    return f"The search failed: {type(error).__name__}: {error}"


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request, client_address):
        """Dropped clients are routine on the web: one line. Anything else keeps its
        traceback in the log (never in a page)."""
        import sys  # pylint: disable=import-outside-toplevel

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            log.info("%s dropped: %s", client_address[0], type(error).__name__)
            return
        log.error("request from %s failed", client_address[0], exc_info=True)


def make_server(options: WebOptions) -> http.server.ThreadingHTTPServer:
    backend = SearchBackend(options)
    handler = type("BoundHandler", (Handler,), {"backend": backend, "options": options,
                                                "timeout": options.connection_timeout_s})
    server = _Server((options.host, options.port), handler)
    server.daemon_threads = True
    server.backend = backend  # type: ignore[attr-defined]
    return server


def serve_forever(options: WebOptions, on_ready: Callable[[str], None] = print) -> None:
    """Blocks until SIGTERM or Ctrl-C."""
    server = make_server(options)
    host, port = server.server_address[:2]
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    on_ready(f"http://{host}:{port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.backend.close()  # type: ignore[attr-defined]
