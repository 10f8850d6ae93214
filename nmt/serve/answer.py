"""A request checked against the server's limits, and translations as JSON-ready answers (the
same words and matrices as `nmt translate --attention` writes)."""

from __future__ import annotations

import math

from nmt.inference.explain import attention_record
from nmt.inference.search import widest_beam
from nmt.inference.translator import Translation, Translator
from nmt.serve.batcher import DecodeKey
from nmt.serve.options import ServeOptions


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP status, `detail` one line or, for an
    invalid body (422), a list of problems ({"loc", "msg", "type"}), as JSON writes them."""

    def __init__(self, status: int, detail: str | list[dict]) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def widest_allowed(translator: Translator, options: ServeOptions) -> int:
    """The widest beam a request may ask for: the server's limit or the vocabulary's."""
    return min(options.max_beam, widest_beam(translator.tokenizer.tgt_vocab_size))


def check_request(text: str | list[str], beam: int | None, n_best: int,
                  length_penalty: float | None, attention: bool, translator: Translator,
                  options: ServeOptions) -> tuple[list[str], DecodeKey]:
    """The sentences and decoding options of a valid request; RequestError (413: too large,
    422: an option out of range) otherwise."""
    sentences = [text] if isinstance(text, str) else text
    if len(sentences) > options.max_sentences:
        raise RequestError(413, f"text: {len(sentences)} sentences in one request, at most "
                                f"{options.max_sentences}: send them in several requests")
    for i, s in enumerate(sentences):
        if len(s) > options.max_chars:
            where = "text" if isinstance(text, str) else f"text[{i}]"
            raise RequestError(413, f"{where}: {len(s)} characters, at most "
                                    f"{options.max_chars} in one sentence")
    decode = translator.decode
    beam = beam or decode.beam
    widest = widest_allowed(translator, options)
    if beam > widest:
        raise RequestError(422, f"beam: {beam} is wider than this server allows (at most "
                                f"{widest})")
    if n_best > beam:
        raise RequestError(422, f"n_best: {n_best} needs a beam of at least {n_best} (beam "
                                f"is {beam})")
    alpha = decode.length_penalty if length_penalty is None else float(length_penalty)
    return sentences, DecodeKey(beam, n_best, alpha, attention)


def translate_batch(translator: Translator, sentences: list[str], key: DecodeKey) -> list[dict]:
    """Runs in the batch worker, the translator's only user: translates with `key`'s options,
    one answer per sentence."""
    results = translator.translate(sentences, beam=key.beam, n_best=key.n_best,
                                   keep_attention=key.attention,
                                   length_penalty=key.length_penalty)
    return [answer(translator, tr, key.attention) for tr in results]


def answer(translator: Translator, tr: Translation, attention: bool) -> dict:
    """One sentence's answer: the best translation, the n-best list and, when asked, the
    attention record of `nmt translate --attention` (null for an empty sentence)."""
    decode = translator.tokenizer.decode_tgt
    out = {"source": tr.source, "text": tr.text, "score": _finite(tr.score),
           "n_best": [{"text": decode([h.tokens])[0], "score": _finite(h.score)}
                      for h in tr.hypotheses]}
    if attention:
        out["attention"] = _attention(translator, tr) if tr.src_pieces else None
    return out


def _attention(translator: Translator, tr: Translation) -> dict:
    record = attention_record(translator, tr)
    keys = ("source_pieces", "target_pieces", "attention", "source_words", "target_words",
            "word_attention")
    return {k: record[k] for k in keys}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
