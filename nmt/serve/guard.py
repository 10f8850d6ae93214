"""What a request must pass before it reaches a route: the API key, when the server has one
(401), the body-size limit (413) and the request's deadline (408, 504); the first two are
checked before the body is parsed.

The page, the API's documentation (/, /docs, /openapi.json) and /health need no key: they hold
no data (/health says only whether the server is serving, for load balancers' probes), and the
page asks for the key when the API refuses it."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/health"})
DEADLINE = "nmt.deadline"  # scope key: the request's deadline, as time.monotonic() gives it
_POLL_S = 0.5  # how often a body read looks whether the server is stopping
_UNAUTHORIZED = "{what}: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
_RETRY = [(b"retry-after", b"1")]


def key_matches(given: str | None, api_key: str) -> bool:
    """Compares in constant time, so the answer's timing tells nothing about the key."""
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())


def _given_key(headers: dict[bytes, bytes]) -> str | None:
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1")
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Guard:
    """ASGI middleware: refuses a request without the API key (401), then reads the whole body
    before the app does and answers 413 as soon as it is larger than `max_bytes` (by its
    Content-Length, or while it arrives), so the app never parses an oversized body. The app
    then receives the body as one message.

    Each request has `timeout_s` seconds from its headers (its deadline, in the scope under
    DEADLINE): a body still arriving then is refused (408), an app that has not begun its
    answer by then is cancelled and the client gets 504. While the server is `stopping`, a
    body still arriving is refused (503)."""

    def __init__(self, app, max_bytes: int, api_key: str | None = None, timeout_s: float = 60.0,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key
        self.timeout_s, self.stopping = timeout_s, stopping

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = scope[DEADLINE] = time.monotonic() + self.timeout_s
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS:
            given = _given_key(headers)
            if not key_matches(given, self.api_key):
                what = "a wrong API key" if given is not None else "no API key"
                await _error(send, 401, _UNAUTHORIZED.format(what=what),
                             [(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _error(send, 400, "Content-Length: expected a number of bytes")
                return
            if int(declared) > self.max_bytes:
                await _error(send, 413, self._too_large(int(declared)))
                return
        body = await self._read_body(receive, send, deadline)
        if body is None:
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        await self._answer_by(deadline, scope, replay, send)

    async def _read_body(self, receive, send, deadline: float) -> bytes | None:
        """The whole body; None once the client left or was answered (413, 408, 503)."""
        body = bytearray()
        while True:
            message = await self._next_message(receive, deadline)
            if message is None:
                if self.stopping():
                    await _error(send, 503, "the server is shutting down", _RETRY)
                else:
                    await _error(send, 408, f"request body: not received within "
                                            f"{self.timeout_s:g} s (--timeout)")
                return None
            if message["type"] == "http.disconnect":
                return None  # the client went away while sending: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _error(send, 413, self._too_large(len(body), at_least=True))
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _next_message(self, receive, deadline: float):
        """The client's next message; None if the deadline passes or the server stops first."""
        while True:
            wait = min(_POLL_S, deadline - time.monotonic())
            if wait <= 0 or self.stopping():
                return None
            try:
                return await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                continue

    async def _answer_by(self, deadline: float, scope, receive, send) -> None:
        """Runs the app; if it has not begun its answer by the deadline, cancels it (a queued
        translation is then dropped) and answers 504. An answer under way is completed."""
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, watched))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if not done and not started:
                task.cancel()
                await asyncio.wait({task})
                if not started:
                    await _error(send, 504, f"no answer within {self.timeout_s:g} s (--timeout):"
                                            f" the server is busy; try again later, or send "
                                            f"fewer sentences", _RETRY)
                return
            await task
        finally:
            if not task.done():
                task.cancel()

    def _too_large(self, size: int, at_least: bool = False) -> str:
        more = "more than " if at_least else ""
        return (f"request body: {more}{size} bytes, at most {self.max_bytes}: send fewer or "
                f"shorter sentences per request")


async def _error(send, status: int, detail: str,
                 extra: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON refusal that closes the connection (the client may still be sending)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="The server's API key (or `Authorization: Bearer KEY`).")
_bearer = HTTPBearer(auto_error=False, description="The server's API key as a bearer token.")


def key_checker(api_key: str | None):
    """The same check as a FastAPI dependency, so that /docs shows the routes' security and a
    route served without the middleware is still guarded."""

    def check(header: str | None = Security(_header),
              bearer: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
        if api_key is None:
            return
        given = header if header is not None else (bearer.credentials if bearer else None)
        if not key_matches(given, api_key):
            what = "a wrong API key" if given is not None else "no API key"
            raise HTTPException(401, _UNAUTHORIZED.format(what=what),
                                headers={"WWW-Authenticate": "Bearer"})

    return check
