"""What a request must pass before it reaches a route: the API key, when the server has one
(401), and the body-size limit (413); both are checked before the body is parsed.

The page and the API's documentation (/, /docs, /openapi.json) need no key: they hold no data,
and the page asks for the key when the API refuses it."""

from __future__ import annotations

import hmac
import json

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

PUBLIC_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_UNAUTHORIZED = "{what}: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"


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
    then receives the body as one message."""

    def __init__(self, app, max_bytes: int, api_key: str | None = None) -> None:
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away while sending: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _error(send, 413, self._too_large(len(body), at_least=True))
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        more = "more than " if at_least else ""
        return (f"request body: {more}{size} bytes, at most {self.max_bytes}: send fewer or "
                f"shorter sentences per request")


async def _error(send, status: int, detail: str,
                 extra: list[tuple[bytes, bytes]] = ()) -> None:
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
