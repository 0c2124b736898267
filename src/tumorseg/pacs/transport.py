"""Hardened HTTP under dicomweb-client: every answer bounded in bytes while it streams, every request in time
(a watchdog closes a dripping socket), redirects only to allowed origins."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

from .config import PacsConfig, PacsError, redacted

DEADLINE_S = 120.0  # per request, in all: a server that drips bytes is given up after this (plus one read)


MAX_SEARCH_BYTES = 16 << 20  # a QIDO answer (500 studies are ~1 MB)


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    port = u.port or {"http": 80, "https": 443}.get(u.scheme.lower())
    return (u.scheme.lower(), (u.hostname or "").lower(), port)


def _bounded(raw, limit: int, deadline: float, what: str) -> None:
    """Count an answer's bytes as they stream (decoded, so a gzip bomb counts too) and watch the wall clock:
    beyond ``limit`` bytes or past ``deadline`` the read fails with a PacsError, whatever the server does."""
    count = [0]

    def check(n: int) -> None:
        count[0] += n
        if count[0] > limit:
            raise PacsError(f"{what}: the answer is larger than {limit >> 20} MB; refused")
        if time.monotonic() > deadline:
            raise PacsError(f"{what}: the answer took longer than {DEADLINE_S:g} s; refused")

    read = raw.read

    def bounded_read(*a, **k):
        check(0)
        data = read(*a, **k)
        check(len(data or b""))
        return data

    raw.read = bounded_read
    chunked = getattr(raw, "read_chunked", None)
    if chunked is not None:

        def bounded_chunked(*a, **k):
            for chunk in chunked(*a, **k):
                check(len(chunk))
                yield chunk

        raw.read_chunked = bounded_chunked


_inflight = threading.local()  # the sockets the current thread's request talks on (for its deadline)


def _watched_adapter():
    """A requests adapter whose connections note their socket for the request in flight on this thread, so a
    deadline can cut a request whatever it is blocked on (a dripping status line, headers or body)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def note(conn) -> None:
        socks = getattr(_inflight, "socks", None)
        if socks is not None and conn.sock is not None:
            socks.append(conn.sock)

    class Conn(HTTPConnection):
        def request(self, *a, **k):
            super().request(*a, **k)
            note(self)

    class TLSConn(HTTPSConnection):
        def request(self, *a, **k):
            super().request(*a, **k)
            note(self)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConn

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *a, **k):
            super().init_poolmanager(*a, **k)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}

    return Adapter()


def session(cfg: PacsConfig):
    """A requests session that never reads more than it may: every answer bounded in bytes as it streams and
    in wall time per request (a watchdog shuts the request's socket at the deadline, whatever it waits on),
    read whole before it is handed on, and redirects only within the configured origin (unless
    ``allow_redirects_to``)."""
    import requests

    home = _origin(cfg.url)
    allowed = {home} | {_origin(u) for u in cfg.allow_redirects_to}
    local = threading.local()

    class Bounded(requests.Session):
        @property
        def limit(self) -> int:  # per thread: the app searches and retrieves on one session at once
            return getattr(local, "limit", MAX_SEARCH_BYTES)

        @limit.setter
        def limit(self, n: int) -> None:
            local.limit = n

        def send(self, request, **kw):
            import socket

            if _origin(request.url) not in allowed:
                raise PacsError(
                    f"{cfg.url}: the server redirected to another origin ({redacted(request.url).split('?')[0]}); "
                    "refused (--pacs-allow-redirect ORIGIN allows it)"
                )
            kw["stream"] = True
            started = time.monotonic()
            socks: list = []
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                for sk in socks:
                    try:
                        sk.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            _inflight.socks = socks
            timer = threading.Timer(DEADLINE_S, expire)
            timer.daemon = True
            timer.start()
            try:
                resp = super().send(request, **kw)
                _bounded(resp.raw, self.limit, started + DEADLINE_S, f"{cfg.url}")
                resp.content  # noqa: B018  (read whole now, through the bounds; callers that stream get it too)
                return resp
            except PacsError:
                raise
            except Exception:
                if expired.is_set():
                    raise PacsError(f"{cfg.url}: the answer took longer than {DEADLINE_S:g} s; refused") from None
                raise
            finally:
                timer.cancel()
                _inflight.socks = None

    s = Bounded()
    adapter = _watched_adapter()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
