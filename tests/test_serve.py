"""`nmt serve`: the API through FastAPI's TestClient (answers equal `Translator.translate`'s,
attention shapes, every refusal and its status), dynamic batching on a fake model, and the
command itself (startup errors, the API key's variable, Ctrl-C/SIGTERM on a real process)."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt import checkpoint
from nmt.cli import app as cli_app
from nmt.config import from_dict, to_dict
from nmt.inference.explain import attention_record
from nmt.inference.translator import load_translator
from nmt.model.seq2seq import build_model
from nmt.serve.batcher import Batcher, Busy, DecodeKey, ShuttingDown, TimedOut
from nmt.serve.options import ServeOptions

from conftest import http_json, serve_process

fastapi = pytest.importorskip("fastapi", reason="nmt serve needs fastapi: pip install 'nmt[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from nmt.serve.app import create_app  # noqa: E402

runner = CliRunner()
SENTENCES = ["The cat sees the ball.", "My friends buy bread.", "The girl reads the letter.",
             "", "The old teacher has a red car every day."]


@pytest.fixture(scope="module")
def translator(trained_run):
    return load_translator(trained_run)


def serve(translator, **options) -> TestClient:
    """A TestClient over a fresh app; use it in `with` so that its worker starts and stops."""
    return TestClient(create_app(translator, ServeOptions(**options)))


@pytest.fixture(scope="module")
def client(translator):
    with serve(translator) as c:
        yield c


def post(client, body, **kw):
    return client.post("/translate", json=body, **kw)


# --- answers -------------------------------------------------------------------------------

def test_single_sentence_and_list_equal_the_translator(client, translator):
    one = post(client, {"text": SENTENCES[0]})
    assert one.status_code == 200, one.text
    [answer] = one.json()["translations"]
    expected = translator.translate([SENTENCES[0]])[0]
    assert answer["text"] == expected.text and answer["source"] == expected.source
    assert answer["score"] == pytest.approx(expected.score, abs=1e-4)

    many = post(client, {"text": SENTENCES})
    assert many.status_code == 200, many.text
    got = many.json()["translations"]
    expected = translator.translate(SENTENCES)
    assert [t["text"] for t in got] == [t.text for t in expected]  # in input order
    assert got[3]["text"] == "" and all(t["text"] for i, t in enumerate(got) if i != 3)


@pytest.mark.parametrize("options", [{"beam": 1}, {"beam": 4, "n_best": 3},
                                     {"beam": 3, "n_best": 2, "length_penalty": 0.0}])
def test_decoding_options_equal_the_translator(client, trained_run, options):
    response = post(client, {"text": SENTENCES, **options})
    assert response.status_code == 200, response.text
    body = response.json()
    reference = load_translator(trained_run, length_penalty=options.get("length_penalty"))
    expected = reference.translate(SENTENCES, beam=options["beam"],
                                   n_best=options.get("n_best", 1))
    assert body["beam"] == options["beam"] and body["n_best"] == options.get("n_best", 1)
    for got, tr in zip(body["translations"], expected):
        texts = [reference.tokenizer.decode_tgt([h.tokens])[0] for h in tr.hypotheses]
        assert [h["text"] for h in got["n_best"]] == texts
        assert [h["score"] for h in got["n_best"]] == pytest.approx(
            [h.score for h in tr.hypotheses], abs=1e-4)
        assert got["text"] == tr.text == texts[0]


def test_concurrent_requests_are_batched_and_answered_as_alone(translator):
    """Requests arriving together share batches; each answer equals the sentence translated
    on its own, whatever it was batched with."""
    sentences = [s for s in SENTENCES if s] * 4
    alone = {s: translator.translate([s])[0].text for s in set(sentences)}
    with serve(translator, max_wait_ms=300) as c, ThreadPoolExecutor(len(sentences)) as pool:
        responses = list(pool.map(lambda s: post(c, {"text": s}), sentences))
        served = c.get("/info").json()["served"]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()["translations"][0]["text"] for r in responses] == [alone[s] for s in
                                                                         sentences]
    assert served["requests"] == len(sentences) and served["sentences"] == len(sentences)
    assert served["batches"] < len(sentences)


def test_attention_is_target_words_by_source_words(client, translator):
    response = post(client, {"text": SENTENCES, "attention": True, "beam": 3})
    assert response.status_code == 200, response.text
    expected = translator.translate(SENTENCES, beam=3, keep_attention=True)
    for got, tr in zip(response.json()["translations"], expected):
        att = got["attention"]
        if not tr.src_pieces:
            assert att is None
            continue
        record = attention_record(translator, tr)  # what `nmt translate --attention` writes
        assert att["source_words"] == record["source_words"]
        assert att["target_words"] == record["target_words"]
        words = torch.tensor(att["word_attention"])
        assert words.shape == (len(att["target_words"]), len(att["source_words"]))
        assert torch.allclose(words.sum(1), torch.ones(words.size(0)), atol=1e-4)
        pieces = torch.tensor(att["attention"])
        assert pieces.shape == (len(att["target_pieces"]), len(att["source_pieces"]))
        assert torch.allclose(pieces, torch.tensor(record["attention"]), atol=1e-4)
    assert post(client, {"text": SENTENCES[0]}).json()["translations"][0]["attention"] is None


def _variant_checkpoint(translator, kind: str, tmp: Path) -> Path:
    """The tiny run's checkpoint with an untrained model of another attention type."""
    data = checkpoint.load(translator.path)
    cfg = from_dict(data["config"])
    cfg = replace(cfg, model=replace(cfg.model, attention=replace(cfg.model.attention,
                                                                  type=kind, window=1)))
    torch.manual_seed(0)
    tok = translator.tokenizer
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
    path = tmp / f"{kind}.pt"
    checkpoint.save(path, {**data, "config": to_dict(cfg), "model": model.state_dict()})
    return path


@pytest.mark.parametrize("kind", ["none", "global", "local-m", "local-p", "hard"])
def test_every_attention_type_gives_a_well_formed_matrix(translator, tmp_path, kind):
    variant = load_translator(_variant_checkpoint(translator, kind, tmp_path))
    with serve(variant) as c:
        info = c.get("/info").json()
        response = post(c, {"text": SENTENCES[4], "attention": True, "beam": 2})
    assert info["attention"]["type"] == kind
    assert response.status_code == 200, response.text
    att = response.json()["translations"][0]["attention"]
    pieces = torch.tensor(att["attention"])
    assert pieces.shape == (len(att["target_pieces"]), len(att["source_pieces"]))
    rows = pieces.sum(1)
    if kind == "none":
        assert torch.all(pieces == 0)  # nothing attended: the page shows empty cells
    else:
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4)
    if kind == "hard":
        assert torch.all((pieces == 0) | (pieces == 1))
    if kind == "local-m":  # a window of 1 around t: at most 3 positions per row
        assert torch.all((pieces > 0).sum(1) <= 3)


def test_health_and_info(client, translator, trained_run):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["name"] == "tiny" and info["step"] == 150
    assert info["parameters"] == sum(p.numel() for p in translator.model.parameters())
    assert info["checkpoint"] == checkpoint.resolve(trained_run).name  # a name, not a path
    assert info["vocabulary"] == {"source": translator.tokenizer.src_vocab_size,
                                  "target": translator.tokenizer.tgt_vocab_size}
    assert info["attention"]["type"] == "global" and info["decode"]["beam"] == 3
    assert info["limits"]["max_sentences"] == ServeOptions().max_sentences
    assert info["limits"]["timeout_s"] == ServeOptions().timeout_s


def test_health_is_public_and_no_answer_names_a_path(translator, trained_run):
    """A load balancer's probe needs no key and learns nothing but the status; no answer
    tells where the checkpoint lies on the server's disk."""
    key = {"X-API-Key": "s3cret"}
    with serve(translator, api_key="s3cret") as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert c.get("/info").status_code == 401 and post(c, {"text": "a."}).status_code == 401
        answers = [c.get(path, headers=key) for path in ("/health", "/info", "/openapi.json",
                                                         "/docs", "/")]
        answers += [post(c, body, headers=key) for body in ({"text": SENTENCES},
                                                            {"text": 5}, {"beam": 99})]
    where = str(checkpoint.resolve(trained_run).parent)
    assert all(a.status_code in (200, 422) for a in answers), [a.text for a in answers]
    assert not [a.text for a in answers if where in a.text or str(trained_run) in a.text]


def test_page_and_api_documentation(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="source"' in page.text and "heatmap" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched
    assert " src=" not in page.text and "<link" not in page.text
    schema = client.get("/openapi.json").json()
    assert {"/translate", "/health", "/info"} <= set(schema["paths"])
    body = schema["paths"]["/translate"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["title"] == "TranslateRequest" and "text" in body["schema"]["required"]
    assert "TranslateResponse" in schema["components"]["schemas"]
    docs = client.get("/docs")  # works offline: nothing fetched from another host
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    assert " src=" not in docs.text and "<link" not in docs.text
    assert client.get("/redoc").status_code == 404  # it would need a CDN


# --- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, words", [
    ({"text": ["a."] * 5}, 413, "5 sentences in one request, at most 4"),
    ({"text": "x" * 41}, 413, "text: 41 characters, at most 40"),
    ({"text": ["ok.", "y" * 41]}, 413, "text[1]: 41 characters"),
    ({"text": "a.", "beam": 5}, 422, "beam: 5 is wider than this server allows (at most 4)"),
    ({"text": "a.", "beam": 2, "n_best": 3}, 422, "n_best: 3 needs a beam of at least 3"),
    ({"text": "a.", "beam": 0}, 422, "beam"),
    ({"text": "a.", "beam": "2"}, 422, "beam"),
    ({"text": "a.", "n_best": 0}, 422, "n_best"),
    ({"text": "a.", "length_penalty": 11}, 422, "length_penalty"),
    ({"text": "a.", "lenght_penalty": 1}, 422, "lenght_penalty"),
    ({"text": 5}, 422, "text"),
    ({"text": []}, 422, "text"),
    ({"text": ["a.", 3]}, 422, "text"),
    ({"sentences": ["a."]}, 422, "text"),
    ([1, 2], 422, "body"),
])
def test_limits_and_invalid_requests_are_refused_clearly(translator, body, status, words):
    with serve(translator, max_sentences=4, max_chars=40, max_beam=4) as c:
        response = post(c, body)
        assert response.status_code == status, response.text
        assert words in json.dumps(response.json()["detail"])
        assert post(c, {"text": "The cat sees the ball."}).status_code == 200  # still serving


def test_body_size_limit_with_and_without_content_length(translator):
    with serve(translator, max_body_bytes=2048) as c:
        big = json.dumps({"text": ["The cat sees the ball."] * 100}).encode()
        declared = c.post("/translate", content=big,
                          headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert "at most 2048" in declared.json()["detail"]
        streamed = c.post("/translate", content=iter([big[:1500], big[1500:]]),
                          headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "more than" in streamed.json()["detail"]
        assert post(c, {"text": "The cat sees the ball."}).status_code == 200


@pytest.mark.parametrize("content, content_type", [
    (b'{"text": "The cat', "application/json"),  # truncated
    (b"\xff\xfe not json", "application/json"),
    (b'{"text": "caf\xe9."}', "application/json"),  # Latin-1, not UTF-8
    (b'\xef\xbb\xbf{"text": "a."}', "application/json"),  # a byte order mark
    (b"The cat sees the ball.", "text/plain"),
    (b'{"text": "a."}', "text/plain"),
    (b'{"text": "a."}', "application/x-www-form-urlencoded"),  # curl -d without -H
    (b"", "application/json"),
    (b"   ", "application/json"),
    (b'{"text": "a."} {"text": "b."}', "application/json"),
])
def test_every_malformed_body_is_400(client, content, content_type):
    response = client.post("/translate", content=content, headers={"content-type":
                                                                    content_type})
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.mark.parametrize("content, status", [
    (b'{"text": "a.", "beam": NaN}', 400),  # Python's json reads these; JSON has none
    (b'{"text": "a.", "length_penalty": Infinity}', 400),
    (b'{"text": "a.", "length_penalty": -Infinity}', 400),
    (b'{"text": "a.", "length_penalty": 1e999}', 400),  # overflows to infinity
    (b'{"text": "a.", "beam": 1e999, "n_best": -1e999}', 400),
    (b'{"text": "a.", "beam": ' + b"9" * 5000 + b"}", 400),  # past Python's int parsing
    (b'{"text": "\\ud800"}', 400),  # a lone surrogate: no character, cannot be echoed
    (b'{"text": 5, "extra": "\\udfff"}', 400),
    (b'{"\\udc80": 1, "text": "a."}', 400),
    (b'{"text": "a\\ud83d."}', 400),
    (b"[" * 100_000 + b"]" * 100_000, 400),  # deeper than the parser's recursion
    (b'{"text": ' + b"[" * 40 + b'"a."' + b"]" * 40 + b"}", 400),
    (b'{"text": "a.", "beam": 1e308}', 422),  # finite, but not an integer
    (b'{"text": "a.", "beam": ' + b"9" * 4000 + b"}", 422),  # huge, but a number
    (b'{"text": "a.", "length_penalty": 1e308}', 422),
    (b'{"text": "a.", "length_penalty": -0.0}', 200),
    (b'{"text": "\\ud83d\\ude00 a."}', 200),  # a surrogate pair is one character
    (b'{"text": [' + b'"a.", ' * 3 + b'["a."]]}', 422),
])
def test_values_json_cannot_write_back_are_refused_as_json(client, content, status):
    """Whatever the client sent, a refusal is a JSON 4xx, never a 500: values that JSON
    cannot encode (NaN, infinities), that cannot be echoed (lone surrogates), nesting deeper
    than any request needs and numbers past Python's parser are unreadable bodies (400)."""
    response = client.post("/translate", content=content,
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    body = json.loads(response.content.decode("utf-8"))  # strict: valid UTF-8 and JSON
    if status != 200:
        assert body["detail"]
    if status == 400:
        assert len(response.content) < 1024  # the value is not echoed
    assert post(client, {"text": "The cat sees the ball."}).status_code == 200


def test_api_key(translator):
    with serve(translator, api_key="s3cret") as c:
        assert c.get("/info").status_code == 401
        assert c.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        body = {"text": "The cat sees the ball."}
        refused = post(c, body)
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert post(c, body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert post(c, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(c, body, headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert post(c, body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert post(c, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # unauthenticated: refused before the body is read or checked
        assert c.post("/translate", content=b"{").status_code == 401
        assert c.get("/").status_code == 200  # the page asks for the key itself


def _slow(translator, seconds: float, translated: list[str]):
    """The translator, each call taking `seconds` longer and recording its sentences."""
    slow = load_translator(translator.path)
    translate = slow.translate

    def late(sentences, **kw):
        translated.extend(sentences)
        time.sleep(seconds)
        return translate(sentences, **kw)

    slow.translate = late
    return slow


def test_a_request_past_its_deadline_gets_504_and_leaves_the_queue(translator):
    translated: list[str] = []
    with serve(_slow(translator, 1.5, translated), timeout_s=0.6, max_wait_ms=0) as c, \
            ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, c, {"text": "The cat sees the ball."})
        time.sleep(0.2)
        start = time.monotonic()
        queued = post(c, {"text": "My friends buy bread."})  # behind the slow one
        took = time.monotonic() - start
        assert queued.status_code == 504, queued.text
        assert "0.6 s" in queued.json()["detail"] and took < 1.4  # not after the slow one
        assert slow.result(10).status_code == 504
        time.sleep(1.5)  # the slow batch ends; the queued request was dropped meanwhile
        assert c.app.state.batcher.queued == 0
    assert translated == ["The cat sees the ball."]


def test_a_stopping_server_answers_503(translator):
    with serve(translator) as c:
        c.app.state.batcher.close()
        response = post(c, {"text": "The cat sees the ball."})
        assert response.status_code == 503 and "shutting down" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"
        assert c.get("/health").status_code == 503


# --- dynamic batching, on a fake model ---------------------------------------------------------

KEY, OTHER = DecodeKey(5, 1, 1.0, False), DecodeKey(1, 1, 1.0, False)


class FakeModel:
    """Answers each sentence by its upper-case form and records the batches it was given."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[tuple[list[str], DecodeKey]] = []
        self.delay, self.fail_on = delay, fail_on
        self.started = threading.Event()

    def __call__(self, sentences, key):
        self.started.set()
        self.batches.append((list(sentences), key))
        time.sleep(self.delay)
        if self.fail_on in sentences:
            raise ValueError(f"cannot translate {self.fail_on!r}")
        return [s.upper() for s in sentences]


def test_batcher_groups_jobs_by_options_and_size():
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=4, max_wait_s=0.3, max_queue=100)
    jobs = [(["a", "b"], KEY), (["c"], OTHER), (["d"], KEY), (["e", "f"], KEY), (["g"], OTHER)]
    futures = [batcher.submit(s, k) for s, k in jobs]
    assert [f.result(5) for f in futures] == [["A", "B"], ["C"], ["D"], ["E", "F"], ["G"]]
    batcher.close()
    assert batcher.join(5)
    assert fake.batches == [(["a", "b", "d"], KEY), (["c", "g"], OTHER), (["e", "f"], KEY)]


def test_batcher_does_not_wait_once_a_batch_is_full():
    fake = FakeModel()
    batcher = Batcher(fake, max_batch=2, max_wait_s=30, max_queue=100)
    start = time.monotonic()
    assert batcher.submit(["a", "b"], KEY).result(5) == ["A", "B"]
    assert time.monotonic() - start < 5
    batcher.close()


def test_under_load_the_wait_counts_from_when_the_worker_is_free():
    """A job that queued behind a running batch waits for the requests that its clients send
    as soon as they are answered, so that the two make one batch, not two halves."""
    fake = FakeModel(delay=0.3)
    batcher = Batcher(fake, max_batch=8, max_wait_s=0.2, max_queue=100)
    running = batcher.submit(["a"], KEY)
    assert fake.started.wait(5)
    queued = batcher.submit(["b"], KEY)  # arrives while "a" is translated
    assert running.result(5) == ["A"]
    again = batcher.submit(["c"], KEY)  # "a"'s client is back
    assert queued.result(5) == ["B"] and again.result(5) == ["C"]
    assert [sentences for sentences, _ in fake.batches] == [["a"], ["b", "c"]]
    batcher.close()


def test_a_cancelled_job_costs_nothing():
    fake = FakeModel(delay=0.3)
    batcher = Batcher(fake, max_batch=1, max_wait_s=0, max_queue=100)
    first = batcher.submit(["a"], KEY)
    assert fake.started.wait(5)
    gone = batcher.submit(["gone"], KEY)  # queued behind the running batch
    assert gone.cancel()
    assert batcher.submit(["c"], KEY).result(5) == ["C"] and first.result(5) == ["A"]
    assert all("gone" not in sentences for sentences, _ in fake.batches)
    assert batcher.stats.cancelled == 1
    batcher.close()


def test_cancelled_jobs_of_other_options_do_not_fill_the_queue():
    """Only live jobs count towards --max-queue: a cancelled job of another decoding option,
    which no batch of the running option would remove, must not make the queue look full."""
    fake = FakeModel(delay=0.3)
    batcher = Batcher(fake, max_batch=8, max_wait_s=0, max_queue=3)
    running = batcher.submit(["a"], KEY)
    assert fake.started.wait(5)
    gone = batcher.submit(["x", "y"], OTHER)
    assert gone.cancel()
    assert batcher.queued == 0
    queued = batcher.submit(["b", "c", "d"], KEY)  # Busy if "x" and "y" still counted
    assert batcher.queued == 3
    assert running.result(5) == ["A"] and queued.result(5) == ["B", "C", "D"]
    assert all(key == KEY for _, key in fake.batches) and batcher.stats.cancelled == 1
    batcher.close()


def test_cancelled_jobs_do_not_make_a_batch_start_early():
    """A batch starts when its live jobs fill it or its wait ends: cancelled sentences do not
    count, so a request sent within the wait still joins the batch."""
    fake = FakeModel(delay=0.3)
    batcher = Batcher(fake, max_batch=3, max_wait_s=1.0, max_queue=100)
    running = batcher.submit(["r"], KEY)
    assert fake.started.wait(5)
    gone = batcher.submit(["x", "y"], KEY)
    assert gone.cancel()
    first = batcher.submit(["a"], KEY)
    assert running.result(5) == ["R"]
    second = batcher.submit(["b"], KEY)  # within the wait after the worker became free
    assert first.result(5) == ["A"] and second.result(5) == ["B"]
    assert [sentences for sentences, _ in fake.batches] == [["r"], ["a", "b"]]
    batcher.close()


def test_a_job_past_its_deadline_is_dropped_not_translated():
    fake = FakeModel(delay=0.5)
    batcher = Batcher(fake, max_batch=1, max_wait_s=0, max_queue=100)
    running = batcher.submit(["a"], KEY)
    assert fake.started.wait(5)
    late = batcher.submit(["late"], KEY, deadline=time.monotonic() + 0.1)
    assert running.result(5) == ["A"]
    with pytest.raises(TimedOut):
        late.result(5)
    assert batcher.submit(["b"], KEY).result(5) == ["B"]
    assert [sentences for sentences, _ in fake.batches] == [["a"], ["b"]]
    assert batcher.queued == 0
    batcher.close()


def test_retries_of_a_failed_batch_stop_at_each_request_s_deadline():
    """A failed batch is retried one request at a time; a request whose deadline passed
    meanwhile is not retried, so a slow failure cannot hold the queue forever."""
    fake = FakeModel(delay=0.5, fail_on="boom")
    batcher = Batcher(fake, max_batch=8, max_wait_s=0.05, max_queue=100)
    deadline = time.monotonic() + 0.8  # the batch fails at about 0.55 s, "a" ends at 1.05 s
    jobs = [batcher.submit([s], KEY, deadline=deadline) for s in ("a", "boom", "b")]
    assert jobs[0].result(5) == ["A"]
    for job in jobs[1:]:
        with pytest.raises(TimedOut):
            job.result(5)
    assert [sentences for sentences, _ in fake.batches] == [["a", "boom", "b"], ["a"]]
    assert batcher.submit(["c"], KEY).result(5) == ["C"]
    batcher.close()


def test_a_failing_request_fails_alone_and_the_worker_lives_on():
    fake = FakeModel(fail_on="boom")
    batcher = Batcher(fake, max_batch=8, max_wait_s=0.2, max_queue=100)
    good, bad = batcher.submit(["a"], KEY), batcher.submit(["boom"], KEY)
    assert good.result(5) == ["A"]
    with pytest.raises(ValueError, match="boom"):
        bad.result(5)
    assert batcher.submit(["b"], KEY).result(5) == ["B"]
    batcher.close()


def test_queue_limit_and_shutdown():
    fake = FakeModel(delay=0.5)
    batcher = Batcher(fake, max_batch=1, max_wait_s=0, max_queue=2)
    running = batcher.submit(["a"], KEY)
    assert fake.started.wait(5)
    queued = batcher.submit(["b", "c"], KEY)
    with pytest.raises(Busy):
        batcher.submit(["d"], KEY)
    batcher.close(grace_s=0)  # the running batch finishes; the queued job is failed
    with pytest.raises(ShuttingDown):
        batcher.submit(["e"], KEY)
    assert running.result(5) == ["A"]
    with pytest.raises(ShuttingDown):
        queued.result(5)
    assert batcher.join(5)


def test_queued_jobs_are_answered_within_the_grace_period():
    fake = FakeModel(delay=0.2)
    batcher = Batcher(fake, max_batch=1, max_wait_s=0, max_queue=100)
    futures = [batcher.submit([s], KEY) for s in "abc"]
    batcher.close(grace_s=30)
    assert [f.result(5) for f in futures] == [["A"], ["B"], ["C"]]
    assert batcher.join(5)


# --- the command ---------------------------------------------------------------------------------

def test_startup_errors_are_one_line(trained_run, tmp_path):
    cases = [(["--checkpoint", str(tmp_path / "missing.pt")], 1, "checkpoint not found"),
             (["--checkpoint", str(trained_run), "--host", "no such host.invalid"], 2,
              "--host no such host.invalid: not a host name"),
             (["--checkpoint", str(trained_run), "--host", "192.0.2.1"], 2,
              "not an address of this machine"),
             (["--checkpoint", str(trained_run), "--port", "70000"], 2, "--port"),
             (["--checkpoint", str(trained_run), "--max-beam", "1"], 2, "--max-beam 1")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append((["--checkpoint", str(trained_run), "--port", str(port)], 1,
                      f"--port {port}: 127.0.0.1:{port} is already in use"))
        for args, code, words in cases:
            result = runner.invoke(cli_app, ["serve", *args])
            assert result.exit_code == code, (args, result.output)
            assert words in result.stderr and "Traceback" not in result.output, args
            assert len(result.stderr.strip().splitlines()[-1:]) == 1


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("key", ["cl\u00e9", "\u043a\u043b\u044e\u0447", "key\u00a02",
                                 "tab\tkey"])
def test_a_key_no_header_can_carry_is_refused_at_start(tmp_path, how, key):
    """A header arrives as Latin-1 bytes, the key is compared as UTF-8: a key outside visible
    ASCII could never match, so the server refuses to start with it (exit 2, before loading
    anything), without echoing the key."""
    args = ["serve", "--checkpoint", str(tmp_path / "missing.pt"), "--port", "0"]
    if how == "option":
        result = runner.invoke(cli_app, [*args, "--api-key", key])
    else:
        result = runner.invoke(cli_app, args, env={"NMT_API_KEY": key})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0] and "ASCII" in lines[0]
    assert key not in result.output and "Traceback" not in result.output


def test_without_fastapi_the_command_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` fail
    result = runner.invoke(cli_app, ["serve"])
    assert result.exit_code == 1
    assert "pip install 'nmt[serve]'" in result.stderr and "Traceback" not in result.output


def test_the_api_key_comes_from_the_option_or_the_environment(monkeypatch):
    seen = []
    monkeypatch.setattr("nmt.serve.server.run_server", lambda _c, options, *a: seen.append(
        options))
    assert runner.invoke(cli_app, ["serve", "--api-key", "k1"]).exit_code == 0
    assert runner.invoke(cli_app, ["serve"], env={"NMT_API_KEY": "k2"}).exit_code == 0
    assert runner.invoke(cli_app, ["serve", "--max-wait-ms", "2", "--max-body-kb", "3"],
                         env={"NMT_API_KEY": None}).exit_code == 0
    assert [o.api_key for o in seen] == ["k1", "k2", None]
    assert seen[2].host == "127.0.0.1" and seen[2].max_wait_ms == 2
    assert seen[2].max_body_bytes == 3 * 1024 and seen[2].timeout_s == 60
    assert runner.invoke(cli_app, ["serve", "--timeout", "2.5"]).exit_code == 0
    assert seen[3].timeout_s == 2.5
    assert runner.invoke(cli_app, ["serve", "--timeout", "0"]).exit_code == 2


def test_a_process_drops_a_departed_client_and_stops_cleanly_on_sigterm(trained_run):
    server = serve_process(trained_run, "--max-wait-ms", "1500")
    url, proc = server.url, server.proc
    try:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"text": "The dog has a book."}).encode()
        with socket.create_connection((host, int(port))) as gone:  # leaves while queued
            gone.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                         b"json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.3)
        time.sleep(0.3)
        status, answer = http_json(url + "/translate", {"text": "The cat sees the ball."})
        assert status == 200 and answer["translations"][0]["text"]
        _, info = http_json(url + "/info")  # the departed request came first: had it been
        assert info["served"]["requests"] == 1  # kept, it would count
        with ThreadPoolExecutor(1) as pool:  # in flight when SIGTERM comes: still answered
            pending = pool.submit(http_json, url + "/translate", {"text": "The cat sees the ball."})
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            status, answer = pending.result(60)
        assert status == 200 and answer["translations"][0]["text"]
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)  # the last lines of stderr
    assert proc.returncode == 0, server.stderr()
    assert "stopped" in server.stderr() and "Traceback" not in server.stderr()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
