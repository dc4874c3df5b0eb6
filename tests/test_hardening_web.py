"""Regression tests for issue 15 (web page): request bodies are bounded before they are read,
multipart forms are bounded, frames are refused, silent connections are dropped, dropped clients
cost a log line (no traceback), and uploads declaring huge images are refused from the header.

The real page (serving/web.py) runs on 127.0.0.1 in a thread; its model server address points at
a closed loopback port, which the page reports as unavailable. Every socket has a timeout.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading

import pytest

from serving.web import LISTEN_BACKLOG, check_image, make_server
from serving.web_backend import QueryError, WebOptions

from test_hardening_serving import png_header_only

WAIT_S = 30.0  # upper bound on every socket wait; none is expected to come close


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def page():
    options = WebOptions(server=f"127.0.0.1:{_closed_port()}", host="127.0.0.1", port=0,
                         timeout_s=2.0, connection_timeout_s=1.0)
    server = make_server(options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.backend.close()
    thread.join(timeout=WAIT_S)


def connect(server) -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (the body by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post(server, headers: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    with connect(server) as sock:
        sock.sendall(f"POST /search HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body)
        return read_response(sock)


def test_a_negative_content_length_is_refused_without_reading_the_body(page):
    # One send that the kernel buffers whole (16 KiB, twice the server's read buffer): a larger
    # body would block until the server closes and end in a broken pipe, not in the answer. The
    # socket stays open, so a server that read "to end of stream" would wait for its timeout
    # and answer nothing.
    with connect(page) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                     b"kind=text&text=" + b"A" * (16 << 10))
        status, _, body = read_response(sock)
    assert status == 400
    assert b"not a length" in body and b"AAAA" not in body


def test_a_missing_content_length_is_refused(page):
    status, _, body = post(page, "Content-Type: application/x-www-form-urlencoded\r\n")
    assert status == 411 and b"no length" in body


def test_an_oversized_content_length_is_refused_before_any_body_is_sent(page):
    status, _, body = post(page, "Content-Length: 1000000000\r\n"
                                 "Content-Type: multipart/form-data; boundary=x\r\n")
    assert status == 413 and b"too large" in body


def test_a_multipart_body_of_many_tiny_parts_is_refused_unparsed(page):
    boundary = "b"
    parts = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\n"
                    f"x\r\n" for i in range(60000)) + f"--{boundary}--\r\n"
    body = parts.encode()
    assert len(body) < WebOptions().max_upload_bytes  # under the size cap: parts must count
    status, _, page_html = post(page, f"Content-Length: {len(body)}\r\nContent-Type: "
                                      f"multipart/form-data; boundary={boundary}\r\n", body)
    assert status == 400 and b"too many parts (60000)" in page_html


def test_frames_are_refused(page):
    with connect(page) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, headers, _ = read_response(sock)
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_a_silent_connection_is_closed_by_the_server(page):
    with connect(page) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\n")  # half a request, then silence
        assert sock.recv(1024) == b""  # closed (a recv timeout would raise instead)


def test_the_listen_backlog_is_not_five(page):
    assert page.request_queue_size == LISTEN_BACKLOG >= 64


def test_a_dropped_client_costs_one_line_not_a_traceback(page, caplog):
    caplog.set_level(logging.INFO, logger="serving.web")
    for _ in range(3):
        sock = connect(page)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset: the page's answer has nowhere to go
    with connect(page) as sock:  # and the page still answers
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] in (200, 503)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_an_upload_declaring_a_huge_image_is_refused_from_its_header():
    with pytest.raises(QueryError) as caught:
        check_image(png_header_only(12000, 12000), 5 << 20)
    assert caught.value.status == 413
    assert "12000x12000 pixels" in str(caught.value) and "image_too_large" in str(caught.value)
    with pytest.raises(QueryError) as caught:
        check_image(png_header_only(200, 100), 5 << 20, max_pixels=10000)
    assert "the limit is 10000 pixels" in str(caught.value)


def test_a_huge_upload_is_refused_over_http(page):
    boundary = "b"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nimage\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"bomb.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + \
        png_header_only(12000, 12000) + f"\r\n--{boundary}--\r\n".encode()
    status, _, html = post(page, f"Content-Length: {len(body)}\r\nContent-Type: "
                                 f"multipart/form-data; boundary={boundary}\r\n", body)
    assert status == 413 and b"12000x12000 pixels" in html
