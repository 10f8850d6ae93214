"""The FastAPI application: the page, its API's documentation, /translate, /health and /info,
over one translator.

Every refusal is JSON `{"detail": ...}` with its status: 400 (a body that is not strict JSON),
401 (API key), 408 (a body not received in time), 413 (too large), 422 (invalid or
out-of-range options), 503 (busy or shutting down), 504 (no answer in time)."""

from __future__ import annotations

import asyncio
import html
import logging
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nmt import __version__
from nmt.inference.translator import Translator
from nmt.serve import schema
from nmt.serve.answer import RequestError, check_request, translate_batch
from nmt.serve.batcher import Batcher, Busy, ShuttingDown, TimedOut
from nmt.serve.body import read_request
from nmt.serve.guard import DEADLINE, Guard, key_checker
from nmt.serve.model_info import ModelInfo, describe
from nmt.serve.options import ServeOptions

log = logging.getLogger(__name__)

DESCRIPTION = """{source}→{target} translation with an attention LSTM (`nmt serve`).

Requests that arrive together are translated as one batch; answers equal `nmt translate`'s
with the same options. The page at `/` shows translations, n-best lists and attention."""

_ERRORS = {status: {"model": schema.ErrorBody, "description": text} for status, text in [
    (400, "Not a strict JSON body: empty, not UTF-8, not JSON, another Content-Type, NaN or "
          "infinite numbers, lone surrogates, nesting too deep."),
    (401, "No or a wrong API key (when the server has one)."),
    (408, "The body did not arrive within the server's --timeout."),
    (413, "Body, sentence count or sentence length over the server's limits."),
    (503, "The server is busy or shutting down: try again later."),
    (504, "No answer within the server's --timeout: try again later.")]}
_ERRORS[422] = {"model": schema.InvalidBody, "description": "JSON, but not a valid request: "
                "unknown keys, wrong types, options out of range."}


def packaged_html(name: str) -> str:
    """A self-contained page shipped with the package (nmt/serve/page.html, docs.html)."""
    return resources.files("nmt.serve").joinpath(name).read_text(encoding="utf-8")


def create_app(translator: Translator, options: ServeOptions,
               info: ModelInfo | None = None) -> FastAPI:
    """The application; its batch worker starts now and stops with the app's lifespan (or
    `app.state.batcher.close()`)."""
    info = info or describe(translator)
    batcher = Batcher(partial(translate_batch, translator), options.max_batch,
                      options.max_wait_ms / 1000, options.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close(options.grace_s)
        await asyncio.to_thread(batcher.join, options.grace_s + 60)

    (source, target), codes = translator.language_names(), translator.languages
    app = FastAPI(title="nmt", version=__version__, lifespan=lifespan,
                  description=DESCRIPTION.format(source=source, target=target),
                  docs_url=None, redoc_url=None)  # theirs load scripts from a CDN
    app.state.batcher = batcher
    app.add_middleware(Guard, max_bytes=options.max_body_bytes, api_key=options.api_key,
                       timeout_s=options.timeout_s, stopping=lambda: batcher.closing)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    guarded = [Depends(key_checker(options.api_key))]
    page, docs = packaged_html("page.html"), packaged_html("docs.html")
    for token, value in (("{{SOURCE}}", source), ("{{TARGET}}", target),
                         ("{{SOURCE_CODE}}", codes[0]), ("{{TARGET_CODE}}", codes[1])):
        page = page.replace(token, html.escape(value))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def documentation() -> HTMLResponse:
        return HTMLResponse(docs)

    @app.post("/translate", response_model=schema.TranslateResponse, dependencies=guarded,
              responses=_ERRORS, openapi_extra=schema.request_body())
    async def translate(request: Request):
        """Translate one sentence or a list; optionally with n-best lists and attention."""
        body = read_request(await request.body(), request.headers.get("content-type"))
        sentences, key = check_request(body.text, body.beam, body.n_best, body.length_penalty,
                                       body.attention, translator, options)
        try:
            future = batcher.submit(sentences, key, request.scope.get(DEADLINE))
        except (Busy, ShuttingDown) as err:
            return _unavailable(str(err))
        answers = await _wait_unless_gone(future, request)
        if answers is None:
            return Response(status_code=499)  # nobody is left to read it
        return {"translations": answers, "beam": key.beam, "n_best": key.n_best,
                "length_penalty": key.length_penalty}

    @app.get("/health", response_model=schema.Health, responses={503: _ERRORS[503]})
    async def health():
        """Whether the server is serving (no key needed: for load balancers' probes)."""
        if batcher.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info", response_model=schema.Info, dependencies=guarded,
             responses={401: _ERRORS[401]})
    async def model_info():
        """The model (name, checkpoint file, step, parameters, configuration, vocabulary sizes,
        attention type), the limits, and what the server has done since startup."""
        s = batcher.stats
        served = {"queued_sentences": batcher.queued, "batches": s.batches,
                  "requests": s.requests, "sentences": s.sentences}
        return {**info.summary(), "limits": options.limits(), "served": served}

    return app


async def _wait_unless_gone(future, request: Request) -> list | None:
    """The future's result, or None if the client disconnects first (the job is then
    cancelled: a job not yet started costs nothing). Errors of the job are raised."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when cancelled at the deadline (guard.py)
        gone.cancel()
        future.cancel()  # no-op once the worker has started it
        waiter.cancel()  # so that an outcome arriving later is not left unread
    if waiter not in done:
        log.info("a client left before its answer; its request was dropped")
        return None
    try:
        return waiter.result()
    except ShuttingDown as err:
        raise RequestError(503, str(err)) from None
    except TimedOut as err:
        raise RequestError(504, f"{err} (--timeout): try again later") from None
    except Exception as err:  # logged by the worker, which lives on
        raise RequestError(500, f"translation failed ({type(err).__name__}: {err})") from None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def _request_error(request: Request, err: RequestError) -> JSONResponse:
    if err.status == 503:
        return _unavailable(str(err))
    return JSONResponse({"detail": err.detail}, status_code=err.status)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422, without the refused values (JSON may not be able to write them)."""
    return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")),
                                     "type": str(e.get("type"))} for e in err.errors()]},
                        status_code=422)
