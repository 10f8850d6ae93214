"""`nmt serve` as a real process on 127.0.0.1 against hostile clients, over raw sockets.

Each case is protocol-level abuse (garbage request lines, oversized headers, bad
Content-Length), a body that is not strict JSON, a slow client that never finishes its body, a
client that leaves half-way, a burst of concurrent clients, many requests (memory) or a SIGTERM
under load. Every answer must be a correct one, a 4xx, or a 503/504 (or, for bytes that are not
HTTP, a closed connection): never a 500, a hang, a traceback on stderr or a dead server; after
each case a normal request still succeeds."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import serve_process

pytest.importorskip("fastapi", reason="nmt serve needs fastapi: pip install 'nmt[serve]'")

TIMEOUT_S = 4  # the server's --timeout: a body not in by then gets 408
SENTENCE = "The cat sees the ball."
BODY = json.dumps({"text": SENTENCE}).encode()


@pytest.fixture(scope="module")
def server(trained_run):
    server = serve_process(trained_run, "--timeout", str(TIMEOUT_S), "--max-body-kb", "64")
    server.port = int(server.url.rsplit(":", 1)[1])
    yield server
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.stderr()


@pytest.fixture
def healthy(server):
    """After the test: the server still answers a normal request, and logged no traceback and
    no answer of 500 during the test."""
    start = len(server.lines)
    yield server
    assert server.proc.poll() is None, server.stderr()
    status, answer = post(server.port, BODY)
    assert status == 200 and answer["translations"][0]["text"], answer
    assert_clean(server, start)


def assert_clean(server, start: int = 0) -> None:
    log = "".join(server.lines[start:])
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert " 500" not in log and "500 Internal" not in log, log


def post(port: int, body: bytes, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/translate", body, {"Content-Type": "application/json",
                                                  **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class Raw:
    """One TCP connection: sends bytes as told, and reads in a thread all the server sends
    until it closes the connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.received = bytearray()
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
        except OSError:
            pass
        self.closed.set()

    def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Sends the parts, `pause` seconds apart; stops quietly once the server has closed."""
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            if self.closed.is_set():
                return
            try:
                self.sock.sendall(part)
            except OSError:
                return

    def answer(self, within: float = 10) -> tuple[int | None, bytes]:
        """(status, body) once the server closed the connection; (None, b"") if it closed
        without answering. Fails if it is still open after `within` seconds."""
        assert self.closed.wait(within), f"no answer within {within} s: {bytes(self.received)!r}"
        self.sock.close()
        head, _, body = bytes(self.received).partition(b"\r\n\r\n")
        if not head:
            return None, b""
        return int(head.split(b" ")[1]), body

    def close(self) -> None:
        self.sock.close()


def request(path: bytes, body: bytes, *headers: bytes) -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_post(body: bytes, content_length: int | None = None) -> bytes:
    n = len(body) if content_length is None else content_length
    return request(b"/translate", body, b"Content-Type: application/json",
                   b"Content-Length: %d" % n)


def assert_refused_as_json(status: int | None, body: bytes, expected: int) -> None:
    assert status == expected, body
    assert json.loads(body)["detail"]


# --- the protocol -------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / FOO/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain HTTP port
    b"POST /translate HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 50_000 + b"\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
])
def test_what_is_not_http_gets_400(healthy, data):
    client = Raw(healthy.port)
    client.send(data)
    status, _ = client.answer()
    assert status == 400


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1, 2", b"99999999999999999999999"])
def test_a_bad_content_length_gets_4xx(healthy, length):
    client = Raw(healthy.port)
    client.send(request(b"/translate", BODY, b"Content-Type: application/json",
                        b"Content-Length: " + length))
    status, _ = client.answer()
    assert status in (400, 413)


def test_two_content_lengths_and_a_bad_chunk_get_400(healthy):
    both = Raw(healthy.port)
    both.send(request(b"/translate", BODY, b"Content-Length: %d" % len(BODY),
                      b"Content-Length: 3"))
    chunked = Raw(healthy.port)
    chunked.send(request(b"/translate", b"zz\r\n{}\r\n0\r\n\r\n", b"Transfer-Encoding: chunked",
                         b"Content-Type: application/json"))
    assert both.answer()[0] == 400 and chunked.answer()[0] == 400


@pytest.mark.parametrize("body, status", [
    (b'{"text": "a.", "beam": NaN}', 400),
    (b'{"text": "a.", "length_penalty": 1e999}', 400),
    (b'{"text": "\\ud800"}', 400),
    (b'{"text": "\xff\xfe"}', 400),
    (b"[" * 50_000, 400),
    (b'{"text": "a.", "beam": ' + b"9" * 5000 + b"}", 400),
    (b'{"text": 5}', 422),
    (b'{"text": "' + b"a" * 70_000 + b'"}', 413),
])
def test_bodies_that_cannot_be_echoed_get_json_refusals(healthy, body, status):
    client = Raw(healthy.port)
    client.send(json_post(body))
    assert_refused_as_json(*client.answer(), status)


@pytest.mark.parametrize("text", ["\x00\x01\x1f", "\u202e\u200f reversed", "e\u0301" * 50,
                                  "\U0001f600" * 20, "\ufeff\ufffe\uffff", " ", "a" * 2000])
def test_odd_but_valid_text_is_translated(healthy, text):
    status, answer = post(healthy.port, json.dumps({"text": text}).encode())
    assert status == 200 and len(answer["translations"]) == 1


# --- slow and departed clients -----------------------------------------------------------------

def test_a_body_that_never_ends_gets_408_and_others_are_served_meanwhile(healthy):
    """Slow clients (half a body, then nothing; the body a byte at a time, never complete) are
    refused at the deadline; while they hang, the server answers everybody else at once."""
    start = time.monotonic()
    stalled = [Raw(healthy.port) for _ in range(10)]
    for client in stalled:
        client.send(json_post(BODY[:10], content_length=len(BODY)))
    trickle = Raw(healthy.port)
    parts = [json_post(b"", content_length=len(BODY))] + [bytes([b]) for b in BODY[:-1]]
    threading.Thread(target=lambda: trickle.send(*parts, pause=0.2), daemon=True).start()
    status, answer = post(healthy.port, BODY)  # not held up by the slow ones
    assert status == 200 and time.monotonic() - start < TIMEOUT_S
    for client in [*stalled, trickle]:
        assert_refused_as_json(*client.answer(within=TIMEOUT_S + 5), 408)
    assert time.monotonic() - start < TIMEOUT_S + 3


def test_clients_that_leave_half_way_cost_nothing(healthy):
    halves = [b"POST /transl", json_post(BODY)[:60], json_post(BODY)[:-5], b""]
    for _ in range(5):
        for half in halves:
            client = Raw(healthy.port)
            client.send(half)
            client.close()
    time.sleep(0.3)
    status, answer = post(healthy.port, BODY)
    assert status == 200


# --- load ---------------------------------------------------------------------------------------

def test_a_burst_of_50_clients_is_answered(healthy):
    sentences = [f"The cat sees the ball number {i}." for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda s: post(healthy.port, json.dumps({"text": s}).encode()),
                                sentences))
    assert [status for status, _ in answers] == [200] * 50
    assert [a["translations"][0]["source"] for _, a in answers] == sentences


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_memory_stays_flat_over_many_requests(healthy):
    """Answers and refusals alike: memory settles. The allocator's caches grow over the first
    rounds of requests (by some 20 MiB on the plain layer) and then stop; a leak never stops.
    Rounds of 400 requests go on until three in a row (1,200 requests) grow the server's
    resident memory by under 3 MiB, which a leak of 2.6 KB a request or more never does."""
    bodies = [BODY, b'{"text": "a.", "beam": NaN}', b'{"text": 5}', b'{"text": "\\ud800"}']

    def client(i: int, n: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", healthy.port, timeout=30)
        statuses = []
        for j in range(n):
            conn.request("POST", "/translate", bodies[(i + j) % len(bodies)],
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.getheader("connection") == "close":
                conn.close()
        conn.close()
        return statuses

    def round_of_400() -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return [s for statuses in pool.map(client, range(8), [50] * 8) for s in statuses]

    rss = [rss_mib(healthy.proc.pid)]
    for _ in range(12):
        statuses = round_of_400()
        assert set(statuses) == {200, 400, 422} and len(statuses) == 400
        rss.append(rss_mib(healthy.proc.pid))
        if len(rss) > 3 and rss[-1] - rss[-4] < 3:
            break
    else:
        growth = ", ".join(f"{b - a:+.1f}" for a, b in zip(rss, rss[1:]))
        pytest.fail(f"resident memory kept growing, by {growth} MiB per 400 requests")


# --- stopping -----------------------------------------------------------------------------------

def test_sigterm_under_load_stops_cleanly(trained_run):
    """SIGTERM while requests are queued, being translated and still being sent: each gets its
    answer, a 503, or its connection closed; the server exits 0 without a traceback."""
    server = serve_process(trained_run, "--timeout", "30", "--grace", "5")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        slow = [Raw(port) for _ in range(5)]
        for client in slow:
            client.send(json_post(BODY[:10], content_length=len(BODY)))

        def one(i: int) -> int | None:
            try:
                return post(port, json.dumps({"text": [SENTENCE] * 8, "beam": 4}).encode())[0]
            except (OSError, http.client.HTTPException):
                return None  # the connection closed: allowed while stopping

        with ThreadPoolExecutor(30) as pool:
            pending = [pool.submit(one, i) for i in range(30)]
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            statuses = [p.result(60) for p in pending]
        assert server.proc.wait(30) == 0, server.stderr()
        assert set(statuses) <= {200, 503, None} and 200 in statuses, statuses
        for client in slow:
            status, body = client.answer(within=10)
            assert status is None or status == 503, body
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    time.sleep(0.1)  # the last lines of stderr
    assert_clean(server)
    assert "stopped" in server.stderr()
