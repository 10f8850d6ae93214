"""The API's request and response bodies; FastAPI shows them at /docs and /openapi.json.

Requests are strict: unknown keys, strings for numbers and numbers for strings are refused
(422), as the config loader refuses them; a body that is not strict JSON is refused before
(400, nmt/serve/body.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"text": "The cat sleeps on the sofa."},
        {"text": ["Good morning.", "Where is the station?"], "beam": 5, "n_best": 3,
         "attention": True}]})

    text: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="One sentence in the model's source language, or a list of them (answers "
                    "keep their order).")
    beam: int | None = Field(None, ge=1, description="Beam size; 1 is greedy (default: the "
                             "checkpoint's decode.beam; at most the server's max_beam).")
    n_best: int = Field(1, ge=1, description="Hypotheses returned per sentence (at most beam).")
    length_penalty: float | None = Field(None, ge=0, le=10, allow_inf_nan=False,
                                         description="Alpha of the GNMT length penalty "
                                         "(default: the checkpoint's decode.length_penalty).")
    attention: bool = Field(False, description="Also return the best hypothesis's attention, "
                            "as `nmt translate --attention` writes it.")


class Hypothesis(BaseModel):
    text: str
    score: float | None = Field(description="Log-probability (beam: divided by the length "
                                "penalty); null if not finite.")


class Attention(BaseModel):
    """What the best hypothesis looked at, in pieces and in words. `word_attention` is
    target words x source words, each row summing to 1 (0 everywhere for attention type
    `none`); the last target word is the end of sentence."""

    source_pieces: list[str]
    target_pieces: list[str]
    attention: list[list[float]] = Field(description="target pieces x source pieces")
    source_words: list[str]
    target_words: list[str]
    word_attention: list[list[float]] = Field(description="target words x source words")


class Translation(BaseModel):
    source: str = Field(description="The input sentence, normalised as the model reads it.")
    text: str = Field(description="The best translation.")
    score: float | None
    n_best: list[Hypothesis] = Field(description="The n best hypotheses, best first.")
    attention: Attention | None = Field(None, description="When asked for; null for an empty "
                                        "sentence.")


class TranslateResponse(BaseModel):
    translations: list[Translation] = Field(description="One per input sentence, in order.")
    beam: int
    n_best: int
    length_penalty: float


class Health(BaseModel):
    status: str = Field(description="ok, or shutting down (with HTTP 503).")


class Served(BaseModel):
    queued_sentences: int = Field(description="Sentences waiting for the model now.")
    batches: int = Field(description="Batches translated since startup.")
    requests: int
    sentences: int


class Info(BaseModel):
    name: str = Field(description="The run's name (config `name`).")
    checkpoint: str = Field(description="The checkpoint's file name.")
    step: int | None = Field(description="Updates trained when the checkpoint was written.")
    parameters: int
    device: str
    attention: dict = Field(description="The attention variant: type, score, wiring, window, "
                            "coverage.")
    model: dict = Field(description="Sizes and layers.")
    vocabulary: dict = Field(description="SentencePiece vocabulary sizes: source, target.")
    languages: dict = Field(description="Language codes: source, target.")
    decode: dict = Field(description="The checkpoint's decoding defaults.")
    limits: dict = Field(description="What one request may ask for, and its deadline.")
    served: Served = Field(description="What the server has done since startup.")


class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong and what is allowed.")


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where in the body: body, then keys and indexes.")
    msg: str
    type: str


class InvalidBody(BaseModel):
    detail: list[Problem] | str = Field(description="Each problem of the body, or one line.")


def request_body() -> dict:
    """The /translate route's body for the OpenAPI schema: the route reads the body itself
    (nmt/serve/body.py), so FastAPI is told what it expects."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": TranslateRequest.model_json_schema()}}}}
