"""A small search page in front of a model server: ``cmgan web``; this module is its HTTP side.

Stdlib ``http.server`` (one thread per request) serves plain HTML forms, so the page works
without JavaScript: a sentence, an uploaded image (JPEG/PNG; other formats Pillow reads are
re-encoded as PNG here; size capped by ``max_upload_bytes``) or a gallery item is searched in
the search companion ``<model>-search`` (serving/web_backend.py, over gRPC), and the results are
rendered by serving/web_pages.py, which escapes every string from a request, the gallery or the
server before it goes into HTML.
"""
from __future__ import annotations

import email.message
import email.parser
import email.policy
import http.server
import io
import logging
import signal
import socket
import threading
import urllib.parse
from typing import Callable, Optional

from serving.gallery import MODALITIES
from serving.web_backend import (DEFAULT_MAX_IMAGE_PIXELS, Outcome, QueryError, SearchBackend,
                                 WebOptions, unsupported_message)
from serving.web_pages import item_html, render_page, text_query_html, upload_query_html

log = logging.getLogger(__name__)

FORM_OVERHEAD_BYTES = 64 << 10  # multipart headers and the small fields around an upload
DRAIN_LIMIT_BYTES = 64 << 20  # a bigger refused body is not read: the connection is closed
IMAGE_FORMATS = ("JPEG", "PNG")
MAX_FORM_PARTS = 16  # the page's forms have at most 3 fields; 60,000 tiny parts cost 25 s CPU
LISTEN_BACKLOG = 128  # socketserver's default of 5 drops connections under a small burst


def discard_refused_body(handler: http.server.BaseHTTPRequestHandler, length: int) -> None:
    """Reads and drops a refused request body of up to DRAIN_LIMIT_BYTES, so the client gets
    to read the answer; a bigger one stays unread and the connection is closed."""
    if length > DRAIN_LIMIT_BYTES:
        handler.close_connection = True
        return
    remaining = length
    while remaining > 0:
        chunk = handler.rfile.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)


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
            discard_refused_body(self, length)
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
                    "text", [text_value.encode("utf-8")], "text", text_query_html(text_value))
            elif kind == "image":
                filename, data = fields.get("image", (None, b""))
                image = check_image(data, self.options.max_upload_bytes,
                                    self.options.max_image_pixels)
                outcome = self.backend.query(
                    "image", [image], "image", upload_query_html(image, filename))
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
            item_html(served.gallery, modality, item_id, label), query_label=label,
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

