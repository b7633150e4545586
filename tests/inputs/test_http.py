"""inputs/http.py: URLs read with a cap, a whole-exchange timeout, redirects and proxies checked."""

from __future__ import annotations

import gc
import gzip
import http.server
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resnext_cli.inputs.sources import Source, iter_sources, open_source
from tests.helpers import PNG_SIGNATURE, encoded, read_error

# -- URLs: reading them ------------------------------------------------------------------


class Web(http.server.ThreadingHTTPServer):
    daemon_threads = True
    released: threading.Event
    image: bytes

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-body is what several routes test

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{route}"


class Routes(http.server.BaseHTTPRequestHandler):
    server: Web
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = not length

    def do_GET(self) -> None:
        route, _, arg = self.path.rpartition("/")[2].partition("?")
        image = self.server.image
        if route == "ok.png":
            self.reply(200, image, Content_Type="image/png")
        elif route == "untyped":  # no Content-Type at all
            self.reply(200, image)
        elif route == "page":
            self.reply(200, b"<p>hello</p>", Content_Type="  TEXT/Html ; charset=utf-8")
        elif route == "json":
            self.reply(200, b"{}", Content_Type="application/json")
        elif route == "gzip":
            self.reply(200, gzip.compress(image), Content_Type="image/png", Content_Encoding="gzip")
        elif route == "status":  # ?400, or ?499 for a status without a reason phrase
            code = int(arg)
            self.wfile.write(f"HTTP/1.1 {code} {'Bad Request' if code == 400 else ''}\r\n".encode())
            self.wfile.write(b"Content-Length: 0\r\n\r\n")
        elif route == "declared":  # claims ?N bytes, sends none and hangs up
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", arg)
            self.end_headers()
            self.close_connection = True
        elif route == "bytes":  # ?N bytes, no length: the end is the hang-up
            self.reply(200, (PNG_SIGNATURE * (int(arg) // 8 + 1))[: int(arg)], length=False)
        elif route == "hangup":  # accepts, then closes without a word
            self.close_connection = True
        elif route == "loop":
            self.reply(302, Location="/loop")
        elif route == "to-file":
            self.reply(302, Location="file:///etc/passwd")
        elif route == "trickle":  # the status line a byte at a time, for 30 s
            deadline = time.monotonic() + 30
            while not self.server.released.is_set() and time.monotonic() < deadline:
                self.wfile.write(b"H")
                self.wfile.flush()
                time.sleep(0.05)
            self.close_connection = True
        else:
            self.reply(404, b"", Content_Type="text/plain")


@pytest.fixture
def web(monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    """A loopback server with the routes above; no proxy from the environment in the way."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    server = Web(("127.0.0.1", 0), Routes)
    server.released = threading.Event()
    server.image = encoded("PNG")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


def fetch(web: Web, route: str, **options: Any) -> bytes:
    [source] = iter_sources([web.url(route)])
    with open_source(source, **options) as fp:
        body: bytes = fp.read()
    return body


def fetch_error(web: Web, route: str, **options: Any) -> tuple[str, str]:
    return read_error(Source(input="given", url=web.url(route)), **options)


def test_a_url_gives_the_body(web: Web) -> None:
    assert fetch(web, "/ok.png") == web.image
    assert fetch(web, "/untyped") == web.image
    assert fetch(web, "/json") == b"{}"  # only text/* is refused before reading


def test_a_compressed_body_is_decompressed(web: Web) -> None:
    assert fetch(web, "/gzip") == web.image


def test_a_text_reply_is_not_an_image(web: Web) -> None:
    url = web.url("/page")
    assert fetch_error(web, "/page") == (
        "not_an_image",
        f"'{url}' returned text/html, not an image",
    )


def test_http_errors_name_the_status(web: Web) -> None:
    for route, status in (("/status?400", "HTTP 400 Bad Request"), ("/status?499", "HTTP 499")):
        assert fetch_error(web, route) == ("download_failed", f"{status} for '{web.url(route)}'")
    assert fetch_error(web, "/missing") == (
        "download_failed",
        f"HTTP 404 Not Found for '{web.url('/missing')}'",
    )


def test_the_download_cap_declared_and_counted(web: Web) -> None:
    url = web.url("/declared?1001")
    assert fetch_error(web, "/declared?1001", max_bytes=1000) == (
        "too_large",
        f"'{url}' is 1001 bytes, over the 1000 limit",
    )
    # At the cap, the declared length passes; the missing body is the failure then.
    error_type, message = fetch_error(web, "/declared?1000", max_bytes=1000)
    assert (error_type, message.startswith(f"cannot fetch '{web.url('/declared?1000')}': ")) == (
        "download_failed",
        True,
    )
    # Without a declared length the bytes are counted as they come.
    assert len(fetch(web, "/bytes?1000", max_bytes=1000)) == 1000
    assert len(fetch(web, "/bytes?200000", max_bytes=200000)) == 200000
    for size, cap in ((1001, 1000), (200001, 200000)):
        route = f"/bytes?{size}"
        assert fetch_error(web, route, max_bytes=cap) == (
            "too_large",
            f"'{web.url(route)}' is over the {cap}-byte download limit",
        )


def test_the_default_download_cap_is_100_mib(web: Web) -> None:
    route = f"/declared?{(100 << 20) + 1}"
    assert fetch_error(web, route) == (
        "too_large",
        f"'{web.url(route)}' is {(100 << 20) + 1} bytes, over the {100 << 20} limit",
    )
    error_type, message = fetch_error(web, f"/declared?{100 << 20}")
    assert error_type == "download_failed" and message.startswith("cannot fetch ")


def test_redirects_that_loop_or_leave_http(web: Web) -> None:
    assert fetch_error(web, "/loop") == (
        "download_failed",
        f"too many redirects fetching '{web.url('/loop')}'",
    )
    assert fetch_error(web, "/to-file") == (
        "download_failed",
        f"'{web.url('/to-file')}' redirects to a URL that is not http(s)",
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_failures_give_the_os_reason(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = f"http://127.0.0.1:{closed_port()}/a.jpg"
    assert read_error(Source(input=refused, url=refused)) == (
        "download_failed",
        f"cannot fetch '{refused}': connection refused",
    )
    hung_up = web.url("/hangup")
    assert fetch_error(web, "/hangup") == (
        "download_failed",
        f"cannot fetch '{hung_up}': ConnectionError",
    )

    def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    nowhere = "http://photos.invalid/a.jpg"
    assert read_error(Source(input=nowhere, url=nowhere)) == (
        "download_failed",
        f"cannot fetch '{nowhere}': name or service not known",
    )


def test_the_timeout_bounds_a_trickle_directly_and_through_a_proxy(
    web: Web, monkeypatch: pytest.MonkeyPatch, deadlines: list[float]
) -> None:
    # Every read returns in time, so only the deadline on the whole exchange ends it.
    timed_out = "timed out after 0.5s fetching '{}' (raise --timeout to wait longer)"

    def gives_up(url: str) -> None:
        deadlines.clear()
        error = read_error(Source(input=url, url=url), timeout=0.5)
        assert error == ("download_failed", timed_out.format(url))
        assert deadlines == [0.5]  # one deadline on the whole exchange, never restarted

    gives_up(web.url("/trickle"))
    # Through an HTTP proxy (the server plays one), the proxy's socket is bounded too.
    monkeypatch.setenv("HTTP_PROXY", web.url(""))
    gives_up("http://photos.example/trickle")
    assert fetch(web, "/ok.png", timeout=0.5) == web.image


def test_a_socks_proxy_without_pysocks_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import socks  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("PySocks is installed: the proxy would be used")
    for name in ("HTTP_PROXY", "NO_PROXY", "http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
    url = "http://photos.example/a.jpg"
    assert read_error(Source(input=url, url=url)) == (
        "download_failed",
        f"cannot fetch '{url}' through a SOCKS proxy without PySocks "
        "(pip install 'requests[socks]')",
    )


def test_the_timeout_also_counts_a_slow_name_lookup(
    web: Web, monkeypatch: pytest.MonkeyPatch, deadlines: list[float]
) -> None:
    # The lookup outlasts the deadline, so the connection is made after it: it is shut at
    # once rather than left to the trickling server.
    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    url = web.url("/trickle")
    error = read_error(Source(input=url, url=url), timeout=0.5)
    assert error == (
        "download_failed",
        f"timed out after 0.5s fetching '{url}' (raise --timeout to wait longer)",
    )
    # The one deadline had fired before the connection was made: it was shut at once, not
    # given a deadline of its own.
    assert deadlines == [0.5]


@pytest.fixture
def tls_trickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An https URL whose server, once TLS is up, sends its status line a byte at a time."""
    # (A trickled handshake needs no test: Python's ssl bounds the handshake by itself.)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no openssl to make a certificate: {exc}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    for name in ("HTTPS_PROXY", "ALL_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    released = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            try:
                raw, _ = listener.accept()
                with context.wrap_socket(raw, server_side=True) as conn:
                    conn.recv(4096)  # the request
                    deadline = time.monotonic() + 30
                    while not released.is_set() and time.monotonic() < deadline:
                        conn.sendall(b"H")
                        time.sleep(0.05)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/a.jpg"
    finally:
        released.set()
        listener.close()


def test_the_timeout_bounds_an_https_server_that_trickles(tls_trickle: str) -> None:
    started = time.monotonic()
    error = read_error(Source(input=tls_trickle, url=tls_trickle), timeout=0.5)
    elapsed = time.monotonic() - started
    assert error == (
        "download_failed",
        f"timed out after 0.5s fetching '{tls_trickle}' (raise --timeout to wait longer)",
    )
    assert elapsed < 10, f"gave up after {elapsed:.1f}s, not about 0.5s"


def test_the_timeout_bounds_a_connection_never_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener whose backlog is full drops new connection requests: connecting hangs.
    for name in ("HTTP_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            time.sleep(0.2)
            url = f"http://127.0.0.1:{port}/a.jpg"
            started = time.monotonic()
            error = read_error(Source(input=url, url=url), timeout=0.5)
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert error == (
        "download_failed",
        f"timed out after 0.5s fetching '{url}' (raise --timeout to wait longer)",
    )
    assert elapsed < 10, f"gave up after {elapsed:.1f}s, not about 0.5s"


def test_downloads_close_their_connections(web: Web) -> None:
    # Closed when the download ends, not whenever the garbage collector comes by.
    fetch(web, "/ok.png")  # requests' first-use imports and caches
    gc.collect()
    gc.disable()
    try:
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            assert fetch(web, "/ok.png") == web.image
        # The server's ends close once it has seen the client's go: give it a moment.
        deadline = time.monotonic() + 5
        while set(os.listdir("/proc/self/fd")) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(os.listdir("/proc/self/fd")) - before == set()
    finally:
        gc.enable()


def why_not(url: str, **options: Any) -> tuple[str, str]:
    """(error type, why) of fetch(url): why is what a weights download prints."""
    from resnext_cli.inputs.http import DownloadError, fetch

    with pytest.raises(DownloadError) as caught:
        fetch(url, lambda data: None, timeout=5.0, max_bytes=1 << 20, **options)
    return caught.value.error_type, caught.value.why


def test_each_failure_says_why_in_a_few_words(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    assert why_not(web.url("/loop")) == ("download_failed", "too many redirects")
    assert why_not(web.url("/to-file")) == (
        "download_failed",
        "a redirect to a URL that is not http(s)",
    )
    assert why_not("http://[::1") == ("download_failed", "not a valid URL")
    # Only images_only refuses text, and it is off unless asked.
    assert why_not(web.url("/page"), images_only=True)[0] == "not_an_image"
    got: list[bytes] = []
    from resnext_cli.inputs.http import fetch

    fetch(web.url("/page"), got.append, timeout=5.0, max_bytes=1 << 20)
    assert b"".join(got)
    try:
        import socks  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        for name in ("HTTP_PROXY", "NO_PROXY", "http_proxy", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1")
        assert why_not("http://photos.example/a.jpg") == (
            "download_failed",
            "a SOCKS proxy needs PySocks (pip install 'requests[socks]')",
        )


# -- the deadline's timers, driven by a fake clock (no waiting) ---------------------------


class FakeTimer:
    """Stands in for threading.Timer: records its interval and daemon flag; fired by hand."""

    def __init__(self, interval: float, function: Any) -> None:
        self.interval = interval
        self.function = function
        self.daemon: object = "unset"
        self.started = False
        self.cancelled = False

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert self.started and not self.cancelled
        self.function()


@pytest.fixture
def fake_timers(monkeypatch: pytest.MonkeyPatch) -> tuple[list[FakeTimer], list[float]]:
    """The HTTP client's timers made fake and its clock set by hand: (timers made, [now])."""
    from types import SimpleNamespace

    from resnext_cli.inputs import http as client

    timers: list[FakeTimer] = []
    now = [100.0]

    def make(interval: float, function: Any) -> FakeTimer:
        timers.append(FakeTimer(interval, function))
        return timers[-1]

    monkeypatch.setattr(client, "threading", SimpleNamespace(Timer=make, Lock=threading.Lock))
    monkeypatch.setattr(client, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return timers, now


def test_a_stall_deadline_waits_out_what_is_left_after_late_bytes(
    fake_timers: tuple[list[FakeTimer], list[float]],
) -> None:
    # A 10 s stall deadline made at 100 s; bytes arrive at 104 s. Each firing before 114 s
    # starts a timer for exactly what is left; at 114 s (nothing left) the connections shut.
    from resnext_cli.inputs.http import _Deadline

    timers, now = fake_timers
    mine, peer = socket.socketpair()
    try:
        with _Deadline(10.0, stall=True) as deadline:
            deadline.watch(mine)
            now[0] = 104.0
            deadline.arrived()
            now[0] = 110.0
            timers[-1].fire()  # 4 s of the 10 are left
            assert (deadline.expired, [t.interval for t in timers]) == (False, [10.0, 4.0])
            now[0] = 113.5
            timers[-1].fire()  # half a second left: under one second still counts
            assert (deadline.expired, [t.interval for t in timers]) == (False, [10.0, 4.0, 0.5])
            now[0] = 114.0
            timers[-1].fire()  # nothing left: expired, and no timer started for nothing
            assert (deadline.expired, [t.interval for t in timers]) == (True, [10.0, 4.0, 0.5])
            peer.settimeout(5)
            assert peer.recv(1) == b""  # the watched connection was shut down
        assert [(t.started, t.daemon) for t in timers] == [(True, True)] * 3
        assert timers[-1].cancelled
    finally:
        mine.close()
        peer.close()


def test_a_whole_exchange_deadline_fires_whatever_arrived(
    fake_timers: tuple[list[FakeTimer], list[float]],
) -> None:
    from resnext_cli.inputs.http import _Deadline

    timers, now = fake_timers
    with _Deadline(10.0) as deadline:
        now[0] = 109.0
        deadline.arrived()
        now[0] = 110.0
        timers[-1].fire()
        assert (deadline.expired, [t.interval for t in timers]) == (True, [10.0])
    # Daemon timers: a deadline still pending never holds up the interpreter's exit.
    assert [t.daemon for t in timers] == [True]


@pytest.mark.parametrize("stall", [True, False], ids=["stall", "whole_exchange"])
def test_fetch_gives_its_stall_flag_to_the_deadline(
    web: Web, fake_timers: tuple[list[FakeTimer], list[float]], stall: bool
) -> None:
    # The deadline fires 3 s after each chunk arrived: a stall deadline (10 s without a
    # byte) starts again for the 7 s left and the body arrives whole; a deadline on the
    # whole exchange ends the download.
    from resnext_cli.inputs.http import DownloadError, fetch

    timers, now = fake_timers
    got: list[bytes] = []

    def write(chunk: bytes) -> None:
        got.append(chunk)
        now[0] += 3.0
        timers[-1].fire()

    url = web.url("/ok.png")
    if stall:
        fetch(url, write, timeout=10.0, max_bytes=1 << 20, stall=True)
        assert b"".join(got) == web.image
        assert [t.interval for t in timers] == [10.0] + [7.0] * len(got)
    else:
        with pytest.raises(DownloadError) as caught:
            fetch(url, write, timeout=10.0, max_bytes=1 << 20)
        assert (caught.value.error_type, str(caught.value), caught.value.why) == (
            "download_failed",
            f"timed out after 10s fetching '{url}' (raise --timeout to wait longer)",
            "timed out after 10s",
        )
        assert [t.interval for t in timers] == [10.0]
