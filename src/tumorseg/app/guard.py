"""The one guard in front of the app: Host check, API token, body size and time, model slots (first come,
first served). Nothing reaches an endpoint without passing it."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from contextlib import contextmanager


async def _send_json(send, status: int, msg: str) -> None:
    body = json.dumps({"error": msg, "status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ModelSlots:
    """The model slots every model call takes, first come, first served: a request's (the guard takes it once
    the whole body has arrived) and a background job's (it takes one for its model work only, so a study job
    counts against the same two as requests, and network I/O holds none). A lock, not an asyncio primitive,
    so any event loop and any thread can wait; tickets of waiters that gave up are skipped."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.lock = threading.Lock()
        self.active = self.issued = self.serving = 0
        self.abandoned: set[int] = set()

    def ticket(self) -> int:
        with self.lock:
            t = self.issued
            self.issued += 1
            return t

    def enter(self, ticket: int) -> bool:
        with self.lock:
            while self.serving in self.abandoned:
                self.abandoned.discard(self.serving)
                self.serving += 1
            if ticket == self.serving and self.active < self.n:
                self.serving += 1
                self.active += 1
                return True
            return False

    def abandon(self, ticket: int) -> None:
        with self.lock:
            self.abandoned.add(ticket)

    def release(self) -> None:
        with self.lock:
            self.active -= 1

    @contextmanager
    def hold(self, timeout: float = 3600.0, cancelled=None):
        """A slot for the model work of a thread (a job): waits its turn; ``cancelled()`` true gives up."""
        from .common import BadRequest

        t, deadline = self.ticket(), time.monotonic() + timeout
        while not self.enter(t):
            if time.monotonic() > deadline or (cancelled is not None and cancelled()):
                self.abandon(t)
                raise BadRequest(503, "the server is busy with other studies; try again shortly")
            time.sleep(0.01)
        try:
            yield
        finally:
            self.release()


# POST paths that take their model slot themselves, around the model work only: jobs run after their request
# has answered, and a PACS open must not hold a slot while it waits on the network.
SELF_SLOTTED = ("/api/jobs/", "/api/pacs/")


class RequestGuard:
    """ASGI guard in front of the app: Host check, the bearer token (every /api/ path but /api/health, and
    the API docs), body size counted as it streams (a Content-Length over the cap is refused before any
    byte is read), slow-client timeout, and a limit on requests that run the model at once.

    A body is never spooled beyond ``cap`` bytes: the 413 goes out as soon as the count passes it, with
    or without a Content-Length. A client that stops sending for ``body_timeout`` seconds, or whose
    whole body takes longer than ``body_deadline``, gets a 408. A request that runs the model takes a
    model slot only once its whole body has arrived: a slow client never holds one.
    """

    def __init__(
        self,
        app,
        cap: int,
        body_timeout: float = 30.0,
        max_concurrent: int = 2,
        allowed_hosts: set[str] | None = None,
        queue_timeout: float = 120.0,
        body_deadline: float = 120.0,
        token: str | None = None,
        slots: ModelSlots | None = None,
    ):
        self.token = token
        self.app, self.cap, self.body_timeout, self.body_deadline = app, cap, body_timeout, body_deadline
        self.allowed_hosts = allowed_hosts
        self.queue_timeout = queue_timeout
        self.max_concurrent = max_concurrent
        self.slots = slots or ModelSlots(max_concurrent)

    def _host_refusal(self, scope) -> tuple[int, str] | None:
        """421 for a Host header this server does not answer to (DNS-rebinding defence)."""
        if self.allowed_hosts is None:
            return None
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        name = (
            host[1 : host.index("]")]
            if host.startswith("[") and "]" in host
            else host.rsplit(":", 1)[0]
            if host.count(":") == 1
            else host
        )
        if name.lower() in self.allowed_hosts:
            return None
        return (
            421,
            f"host {host!r} is not served here (allowed: {', '.join(sorted(self.allowed_hosts))}; see --allow-host)",
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._host_refusal(scope) or self._refusal(scope)
        if refusal is not None:
            return await _send_json(send, *refusal)
        responded = False
        total = 0

        async def guarded_send(msg):
            if not responded:
                await send(msg)

        async def guarded_receive():
            nonlocal responded, total
            try:
                msg = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                if not responded:
                    responded = True
                    await _send_json(send, 408, f"the request body stalled for {self.body_timeout:g} s")
                return {"type": "http.disconnect"}
            if msg["type"] == "http.request":
                total += len(msg.get("body", b""))
                if total > self.cap + 1_000_000 and not responded:
                    responded = True
                    await _send_json(send, 413, f"upload is larger than the {self.cap / 2**20:g} MB limit")
                    return {"type": "http.disconnect"}
            return msg

        path = scope.get("path", "")
        heavy = scope.get("method") == "POST" and path.startswith("/api/")
        if not heavy:
            return await self.app(scope, guarded_receive, guarded_send)
        body: list[dict] = []
        start = time.monotonic()
        while True:
            try:
                msg = await asyncio.wait_for(
                    guarded_receive(), max(0.0, self.body_deadline - (time.monotonic() - start))
                )
            except TimeoutError:
                return await _send_json(send, 408, f"the request body took longer than {self.body_deadline:g} s")
            if msg["type"] != "http.request" or responded:
                return  # the client left, or a 408/413 went out already
            body.append(msg)
            if not msg.get("more_body"):
                break

        async def replay():
            return body.pop(0) if body else await receive()  # after the body: only a disconnect, no timeout

        if path.startswith(SELF_SLOTTED):
            return await self.app(scope, replay, guarded_send)
        ticket = self.slots.ticket()
        deadline = time.monotonic() + self.queue_timeout
        while not self.slots.enter(ticket):
            if time.monotonic() > deadline:
                self.slots.abandon(ticket)
                return await _send_json(send, 503, "the server is busy with other requests; try again shortly")
            await asyncio.sleep(0.005)
        try:
            await self.app(scope, replay, guarded_send)
        finally:
            self.slots.release()

    def _refusal(self, scope) -> tuple[int, str] | None:
        """A 401 without the token, a 413 for a declared body over the cap; None to go on."""
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        protected = (path.startswith("/api/") and path != "/api/health") or path in ("/docs", "/openapi.json", "/redoc")
        if protected and self.token:
            got = headers.get(b"authorization", b"")
            if not hmac.compare_digest(got, f"Bearer {self.token}".encode()):
                return 401, "missing or wrong API token (Authorization: Bearer <token>)"
        cl = headers.get(b"content-length", b"").decode("latin-1")
        if cl.isdigit() and int(cl) > self.cap + 1_000_000:
            return 413, f"upload is larger than the {self.cap / 2**20:g} MB limit"
        return None
