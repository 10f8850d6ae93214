"""`nmt serve`: one trained model behind an HTTP API and a page, on FastAPI and uvicorn.

    options.py   the server's limits and settings (one frozen dataclass)
    batcher.py   dynamic batching: one worker thread owns the model and translates the
                 requests that arrive together as one batch
    answer.py    a request checked against the limits; a translation as JSON-ready data
    schema.py    the request and response bodies (pydantic, shown at /docs)
    body.py      a /translate body read as strict JSON, then checked against the schema
    guard.py     the API key, the body-size limit and each request's deadline
    model_info.py  what /info says about the model
    app.py       the FastAPI application: routes, errors, the pages
    server.py    binding, uvicorn, signals: what `nmt serve` runs
    page.html    the page in the model's languages: type a sentence, read its translation, the
                 n-best list and the attention
    docs.html    the API's documentation, rendered from /openapi.json with nothing fetched
                 from elsewhere

FastAPI and uvicorn are an optional extra (`pip install 'nmt[serve]'`): only `server.py`,
`app.py`, `guard.py`, `body.py` and `schema.py` import them or pydantic.
"""

from __future__ import annotations

from nmt.errors import NmtError


def require_server_packages() -> None:
    """Raises a one-line NmtError when FastAPI or uvicorn is not installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise NmtError(f"nmt serve needs FastAPI and uvicorn ({err.name} is not installed): "
                       f"pip install 'nmt[serve]'") from None
