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
from nmt.serve.batcher import Batcher, Busy, DecodeKey, ShuttingDown
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
        health = c.get("/health").json()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()["translations"][0]["text"] for r in responses] == [alone[s] for s in
                                                                         sentences]
    assert health["requests"] == len(sentences) and health["sentences"] == len(sentences)
    assert health["batches"] < len(sentences)


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
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["name"] == "tiny" and health["step"] == 150
    assert health["parameters"] == sum(p.numel() for p in translator.model.parameters())
    assert Path(health["checkpoint"]) == checkpoint.resolve(trained_run)
    info = client.get("/info").json()
    assert info["vocabulary"] == {"source": translator.tokenizer.src_vocab_size,
                                  "target": translator.tokenizer.tgt_vocab_size}
    assert info["attention"]["type"] == "global" and info["decode"]["beam"] == 3
    assert info["limits"]["max_sentences"] == ServeOptions().max_sentences


def test_page_and_api_documentation(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="source"' in page.text and "heatmap" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched
    assert " src=" not in page.text and "<link" not in page.text
    schema = client.get("/openapi.json").json()
    assert {"/translate", "/health", "/info"} <= set(schema["paths"])
    assert "TranslateRequest" in schema["components"]["schemas"]


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
    (b'{"text": "The cat', "application/json"),
    (b"\xff\xfe not json", "application/json"),
    (b"The cat sees the ball.", "text/plain"),
    (b"", "application/json"),
])
def test_malformed_bodies_are_400_or_422(client, content, content_type):
    response = client.post("/translate", content=content, headers={"content-type":
                                                                    content_type})
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]


def test_api_key(translator):
    with serve(translator, api_key="s3cret") as c:
        for path in ("/health", "/info"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200
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
    assert seen[2].max_body_bytes == 3 * 1024


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
        _, health = http_json(url + "/health")  # the departed request came first: had it
        assert health["requests"] == 1 and health["sentences"] == 1  # been kept, it would count
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
