"""A /translate body read as strict JSON, then checked against the request's schema.

Whatever a client sends ends as a request or as a refusal whose detail JSON can always write
back: 400 for a body that is not strict JSON, 422 for JSON that is not a valid request.

Strict JSON is what RFC 8259 allows and what can be echoed: Content-Type application/json (or
none), UTF-8 without a byte order mark, one JSON text, no NaN or Infinity (Python's json reads
them) and no number that overflows to infinity, integers of at most Python's 4300 digits, no
lone surrogate (a `\\ud800` escape is no character: no encoding can write it back), nesting at
most MAX_DEPTH deep. A refusal never echoes the value it refuses."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import ValidationError

from nmt.serve.answer import RequestError
from nmt.serve.schema import TranslateRequest

MAX_DEPTH = 32  # objects and arrays inside each other; a request needs 2
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJson(ValueError):
    pass


def read_request(body: bytes, content_type: str | None) -> TranslateRequest:
    """The request in `body`; RequestError 400 (not strict JSON) or 422 (not a request)."""
    data = read_json(body, content_type)
    try:
        return TranslateRequest.model_validate(data)
    except ValidationError as err:
        raise RequestError(422, [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                                 for e in err.errors(include_url=False)]) from None


def read_json(body: bytes, content_type: str | None) -> Any:
    """The JSON value of `body`, or RequestError 400 naming what is wrong (never the value)."""
    if content_type is not None and not _is_json(content_type):
        raise RequestError(400, "Content-Type: expected application/json (send the body as "
                                "JSON, e.g. curl -H 'Content-Type: application/json')")
    if not body.strip():
        raise RequestError(400, 'request body: empty; expected JSON such as {"text": "..."}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body: not UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"request body: not JSON ({err.msg} at line {err.lineno} "
                                f"column {err.colno})") from None
    except RecursionError:
        raise RequestError(400, f"request body: nested deeper than {MAX_DEPTH}") from None
    except ValueError as err:  # _NotJson, or an integer past Python's digit limit
        what = str(err) if isinstance(err, _NotJson) else "an integer of too many digits"
        raise RequestError(400, f"request body: not strict JSON ({what})") from None
    _check_values(data)
    return data


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def _no_constant(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson("a number too large for a double")
    return value


def _check_values(data: Any) -> None:
    """Refuses nesting deeper than MAX_DEPTH and lone surrogates, without recursion."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise RequestError(400, "request body: a string holds a lone surrogate (an "
                                        "escape such as \\ud800 that is no character)")
        elif isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise RequestError(400, f"request body: nested deeper than {MAX_DEPTH}")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
