"""The one HTTP client: a deadline on the whole exchange (or on stalls) and a byte cap.

Image URLs, checkpoint URLs and weights all download through `fetch`, so `--timeout` and
the caps bound every one of them. Failures are typed InputErrors ('download_failed',
'too_large', 'not_an_image'); the weights cache turns them into its own errors.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from resnext_cli.errors import InputError


class DownloadError(InputError):
    """A failed download: its record's message, plus *why* alone and the HTTP *status*."""

    def __init__(
        self, error_type: str, message: str, *, why: str, status: int | None = None
    ) -> None:
        super().__init__(error_type, message)
        self.why = why
        self.status = status


# Called with (bytes so far, total bytes or None) as a download proceeds.
Progress = Callable[[int, "int | None"], None]


def _reason(exc: Exception) -> str:
    """The innermost OS reason in a requests error ('Connection refused'), or its class."""
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return found[-1].strip().lower() if found else exc.__class__.__name__


class _Deadline:
    """Shuts down every connection of one download when its time is up.

    Timeouts on each read cannot bound a server that trickles its status line or
    headers, or sends '100 Continue' for ever: every read returns in time. Shutting
    the connection down wakes whatever read is waiting, wherever it is in the exchange.
    It is shut through a duplicate of each new socket: wrapping a socket in TLS
    detaches the object urllib3 made, and shutting that one down would do nothing.
    """

    def __init__(self, seconds: float, *, stall: bool = False) -> None:
        self.expired = False
        self.seconds = seconds
        # stall=True: the time runs from the last bytes that arrived, not from the start.
        self.stall = stall
        self._last = time.monotonic()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = self._new_timer(seconds)

    def _new_timer(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self._expire)
        timer.daemon = True
        return timer

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def arrived(self) -> None:
        """Bytes came in: a stall deadline starts again from now."""
        self._last = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._sockets.append(sock.dup())

    def _expire(self) -> None:
        with self._lock:
            if self.stall:
                left = self._last + self.seconds - time.monotonic()
                if left > 0:  # bytes arrived meanwhile: wait out the rest
                    self._timer = self._new_timer(left)
                    self._timer.start()
                    return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the connection is already closed
        sock.shutdown(socket.SHUT_RDWR)


# The deadline of the download running in this thread; connections register with it.
_current = threading.local()


def _watch(sock: socket.socket) -> socket.socket:
    # Only fetch's sessions make these connections, and it sets the deadline first.
    deadline: _Deadline = _current.deadline
    deadline.watch(sock)
    return sock


@functools.cache
def _adapter_class() -> type[Any]:
    """A requests adapter whose new sockets register with this thread's _Deadline."""
    import requests
    from urllib3 import connection, connectionpool

    class Watched(connection.HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _watch(super()._new_conn())

    class WatchedTLS(connection.HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _watch(super()._new_conn())

    class Pool(connectionpool.HTTPConnectionPool):
        ConnectionCls = Watched

    class TLSPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = WatchedTLS

    pools = {"http": Pool, "https": TLSPool}

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS has its own connections
                manager.pool_classes_by_scheme = pools
            return manager

    return Adapter


def _session() -> Any:
    import requests

    session = requests.Session()
    adapter = _adapter_class()()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def fetch(
    url: str,
    write: Callable[[bytes], object],
    *,
    timeout: float,
    max_bytes: int,
    stall: bool = False,
    images_only: bool = False,
    progress: Progress | None = None,
) -> None:
    """Download *url* into *write*, chunk by chunk.

    The exchange is given up after about *timeout* seconds in all, or, with *stall*, after
    *timeout* seconds without a byte (a large file on a slow line still arrives). A body
    over *max_bytes* is refused as 'too_large'; with *images_only*, a text/* reply is
    'not_an_image'.
    """
    import requests
    import urllib3

    slow = f"timed out after {timeout:g}s" + (" without a byte" if stall else "")
    timed_out = f"{slow} fetching '{url}' (raise --timeout to wait longer)"
    with _Deadline(timeout, stall=stall) as deadline, _session() as session:
        _current.deadline = deadline
        try:
            with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
                if response.status_code >= 400:
                    status = f"HTTP {response.status_code}"
                    raise DownloadError(
                        "download_failed",
                        f"{status} {response.reason or ''}".rstrip() + f" for '{url}'",
                        why=status,
                        status=response.status_code,
                    )
                ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if images_only and ctype.startswith("text/"):
                    raise DownloadError(
                        "not_an_image", f"'{url}' returned {ctype}, not an image", why=ctype
                    )
                declared = response.headers.get("Content-Length", "")
                total = int(declared) if declared.isdigit() else None
                if total is not None and total > max_bytes:
                    raise DownloadError(
                        "too_large",
                        f"'{url}' is {total} bytes, over the {max_bytes} limit",
                        why=f"{total} bytes, over the {max_bytes} limit",
                    )
                done = 0
                while chunk := response.raw.read1(1 << 20, decode_content=True):
                    deadline.arrived()
                    done += len(chunk)
                    if done > max_bytes:
                        raise DownloadError(
                            "too_large",
                            f"'{url}' is over the {max_bytes}-byte download limit",
                            why=f"over the {max_bytes}-byte download limit",
                        )
                    write(chunk)
                    if progress is not None:
                        progress(done, total)
                if deadline.expired:  # the shut socket ended the body early
                    raise DownloadError("download_failed", timed_out, why=slow)
        except InputError:
            raise
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise DownloadError("download_failed", timed_out, why=slow) from None
        except requests.TooManyRedirects:
            raise DownloadError(
                "download_failed", f"too many redirects fetching '{url}'", why="too many redirects"
            ) from None
        except requests.exceptions.InvalidSchema as exc:
            if "SOCKS" in str(exc):  # a socks:// proxy set, and PySocks not installed
                why = "a SOCKS proxy needs PySocks (pip install 'requests[socks]')"
                raise DownloadError(
                    "download_failed",
                    f"cannot fetch '{url}' through a SOCKS proxy without PySocks "
                    "(pip install 'requests[socks]')",
                    why=why,
                ) from None
            # Otherwise only a redirect can lead off http(s).
            raise DownloadError(
                "download_failed",
                f"'{url}' redirects to a URL that is not http(s)",
                why="a redirect to a URL that is not http(s)",
            ) from None
        except requests.exceptions.InvalidURL:
            raise DownloadError(
                "download_failed", f"'{url}' is not a valid URL", why="not a valid URL"
            ) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired:
                raise DownloadError("download_failed", timed_out, why=slow) from None
            reason = _reason(exc)
            raise DownloadError(
                "download_failed", f"cannot fetch '{url}': {reason}", why=reason
            ) from None
        finally:
            del _current.deadline


def read_url(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """Download an image URL, giving up after about *timeout* seconds in all."""
    body = bytearray()
    fetch(url, body.extend, timeout=timeout, max_bytes=max_bytes, images_only=True)
    return bytes(body)
