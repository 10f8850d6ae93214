"""The FastAPI application: the page, /translate, /health and /info, over one translator.

Every refusal is JSON `{"detail": ...}` with its status: 400 (unreadable body), 401 (API key),
413 (too large), 422 (invalid or out-of-range options), 503 (busy or shutting down)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nmt import __version__
from nmt.inference.translator import Translator
from nmt.serve import schema
from nmt.serve.answer import RequestError, check_request, translate_batch
from nmt.serve.batcher import Batcher, Busy, ShuttingDown
from nmt.serve.guard import Guard, key_checker
from nmt.serve.model_info import ModelInfo, describe
from nmt.serve.options import ServeOptions

log = logging.getLogger(__name__)

DESCRIPTION = """English→Portuguese translation with an attention LSTM (`nmt serve`).

Requests that arrive together are translated as one batch; answers equal `nmt translate`'s
with the same options. The page at `/` shows translations, n-best lists and attention."""

_ERRORS = {status: {"model": schema.ErrorBody, "description": text} for status, text in [
    (401, "No or a wrong API key (when the server has one)."),
    (413, "Body, sentence count or sentence length over the server's limits."),
    (503, "The server is busy or shutting down: try again later.")]}


def page_html() -> str:
    """The self-contained page (package data: nmt/serve/page.html)."""
    return resources.files("nmt.serve").joinpath("page.html").read_text(encoding="utf-8")


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

    app = FastAPI(title="nmt", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(Guard, max_bytes=options.max_body_bytes, api_key=options.api_key)
    app.add_exception_handler(RequestError, _request_error)
    guarded = [Depends(key_checker(options.api_key))]
    page = page_html()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/translate", response_model=schema.TranslateResponse, dependencies=guarded,
              responses=_ERRORS)
    async def translate(body: schema.TranslateRequest, request: Request):
        """Translate one sentence or a list; optionally with n-best lists and attention."""
        sentences, key = check_request(body.text, body.beam, body.n_best, body.length_penalty,
                                       body.attention, translator, options)
        try:
            future = batcher.submit(sentences, key)
        except (Busy, ShuttingDown) as err:
            return _unavailable(str(err))
        answers = await _wait_unless_gone(future, request)
        if answers is None:
            return Response(status_code=499)  # nobody is left to read it
        return {"translations": answers, "beam": key.beam, "n_best": key.n_best,
                "length_penalty": key.length_penalty}

    @app.get("/health", response_model=schema.Health, dependencies=guarded,
             responses={k: v for k, v in _ERRORS.items() if k != 413})
    async def health():
        """Whether the model is loaded and serving, which one, and how much it has done."""
        s = batcher.stats
        body = {"status": "shutting down" if batcher.closing else "ok", "model_loaded": True,
                "name": info.name, "checkpoint": info.checkpoint, "step": info.step,
                "parameters": info.parameters, "device": info.device,
                "queued_sentences": batcher.queued, "batches": s.batches,
                "requests": s.requests, "sentences": s.sentences}
        return JSONResponse(body, status_code=503) if batcher.closing else body

    @app.get("/info", response_model=schema.Info, dependencies=guarded,
             responses={401: _ERRORS[401]})
    async def model_info():
        """The model's configuration, vocabulary sizes, attention type and the limits."""
        return {**info.summary(), "limits": options.limits()}

    return app


async def _wait_unless_gone(future, request: Request) -> list | None:
    """The future's result, or None if the client disconnects first (the job is then
    cancelled: a job not yet started costs nothing). Errors of the job are raised."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not future.done():
            future.cancel()
    if waiter not in done:
        waiter.cancel()
        log.info("a client left before its answer; its request was dropped")
        return None
    try:
        return waiter.result()
    except ShuttingDown as err:
        raise RequestError(503, str(err)) from None
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
    return JSONResponse({"detail": str(err)}, status_code=err.status)
