"""Load test of `nmt serve` on this machine: starts the server on 127.0.0.1 with a checkpoint,
runs bounded client loops (by default 1, 8 and 32 concurrent clients, a fixed number of
one-sentence requests each), and prints sentences/s, p50/p95/p99 latency and the server's
resident memory; then times `Translator.translate` on the same sentences as one file, for
comparison. Any failed request is reported and makes it exit 1. It sends traffic to
127.0.0.1 only.

    python scripts/serve_load.py --checkpoint runs/en-pt
    python scripts/serve_load.py --checkpoint runs/en-pt --clients 1,8,32 --requests 25
    python scripts/serve_load.py --checkpoint runs/en-pt --clients 1 --per-request 64
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"  # the only address this script talks to

# Sentences written for this test (short to long), never taken from a corpus.
SENTENCES = [
    "Good morning.", "Thank you very much.", "Where is my phone?", "The tea is hot.",
    "I like green apples.", "We are going home now.", "My brother plays the piano every day.",
    "Could you open the window, please?", "The children are reading in the garden.",
    "She bought a new bicycle last week.", "The train to the city leaves at nine.",
    "I forgot to buy milk on the way home.", "Our neighbours have a small black dog.",
    "Please call me when you arrive at the station.",
    "The museum is closed on Mondays and public holidays.",
    "He wants to learn Portuguese before his trip to Lisbon.",
    "It rained all afternoon, so we stayed inside and played cards.",
    "If you have any questions about your order, write to us and we will answer quickly.",
    "The teacher explained the lesson twice because many students were confused by it.",
    "After dinner my grandmother told us stories about the village where she grew up.",
]


@dataclass
class Phase:
    clients: int
    requests: int
    sentences: int
    failed: int
    seconds: float
    latencies_ms: list[float]
    rss_mib: float
    server_cpu: float  # CPU seconds the server used in the phase
    client_cpu: float  # CPU seconds the clients (this process) used in the phase
    batches: int  # batches the server translated in the phase

    def row(self) -> str:
        q = percentiles(self.latencies_ms)
        return (f"| {self.clients} | {self.requests} | {self.sentences / self.seconds:.1f} | "
                f"{q[50]:.0f} | {q[95]:.0f} | {q[99]:.0f} | {self.rss_mib:.0f} | "
                f"{self.server_cpu / self.seconds:.2f} / {self.client_cpu / self.seconds:.2f} | "
                f"{self.sentences / max(1, self.batches):.1f} | {self.failed} |")


def percentiles(values: list[float]) -> dict[int, float]:
    if len(values) < 2:
        return {p: (values[0] if values else float("nan")) for p in (50, 95, 99)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in (50, 95, 99)}


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (None: this one)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(checkpoint: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "nmt", "serve", "--checkpoint", checkpoint, "--host", HOST,
           "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        sys.stderr.write(line)
        if "serving on http://" in line:
            address = line.split("serving on http://")[1].split("/")[0]
            host, port = address.rsplit(":", 1)
            if host != HOST:
                proc.kill()
                raise SystemExit(f"the server listens on {host}, not {HOST}")
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr],
                             daemon=True).start()
            return proc, int(port)
    raise SystemExit(f"nmt serve did not start (exit {proc.wait()})")


def sentences_of(index: int, requests: int, per_request: int) -> list[list[str]]:
    """What client `index` sends: `requests` requests of `per_request` sentences, in turn."""
    n = len(SENTENCES)
    return [[SENTENCES[(index * 7 + r * per_request + k) % n] for k in range(per_request)]
            for r in range(requests)]


def client_loop(port: int, index: int, requests: int, body: dict, per_request: int = 1
                ) -> tuple[list[float], int]:
    """One client: `requests` requests in a row on one keep-alive connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    latencies, failed = [], 0
    for r, texts in enumerate(sentences_of(index, requests, per_request)):
        payload = json.dumps({**body, "text": texts})
        start = time.perf_counter()
        try:
            conn.request("POST", "/translate", payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            ok = response.status == 200 and len(json.loads(data)["translations"]) == len(texts)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
            ok = False
            data = str(err).encode()
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=120)
        latencies.append(1000 * (time.perf_counter() - start))
        if not ok:
            failed += 1
            print(f"client {index} request {r}: failed: {data[:200]!r}", file=sys.stderr)
    conn.close()
    return latencies, failed


def info(port: int) -> dict:
    """The server's /info: the model, and its counters under "served"."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", "/info")
    return json.loads(conn.getresponse().read())


def run_phase(port: int, pid: int, clients: int, requests: int, body: dict,
              per_request: int = 1) -> Phase:
    batches = info(port)["served"]["batches"]
    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(pid), cpu_seconds()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: client_loop(port, i, requests, body, per_request),
                                range(clients)))
    seconds = time.perf_counter() - start
    latencies = [x for lat, _ in results for x in lat]
    failed = sum(f for _, f in results)
    return Phase(clients, clients * requests, (clients * requests - failed) * per_request, failed,
                 seconds,
                 latencies, rss_mib(pid), cpu_seconds(pid) - server_cpu,
                 cpu_seconds() - client_cpu, info(port)["served"]["batches"] - batches)


def time_file(checkpoint: str, sentences: list[str], beam: int | None, threads: int | None,
              repeats: int = 3) -> float:
    """Sentences/s of Translator.translate on all the sentences at once, as `nmt translate`
    on a file (the median of `repeats` runs)."""
    import torch

    from nmt.inference.translator import load_translator

    if threads:
        torch.set_num_threads(threads)
    translator = load_translator(Path(checkpoint))
    translator.translate(SENTENCES, beam=beam)  # warm-up: kernels, packed weights
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        translator.translate(sentences, beam=beam)
        rates.append(len(sentences) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients per phase")
    ap.add_argument("--requests", type=int, default=20, help="requests per client")
    ap.add_argument("--per-request", type=int, default=1, help="sentences per request")
    ap.add_argument("--beam", type=int, default=None, help="beam (default: the checkpoint's)")
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="another `nmt serve` option, e.g. --server-arg=--max-wait-ms=10")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    extra = list(args.server_arg) + (["--threads", str(args.threads)] if args.threads else [])
    body = {"beam": args.beam} if args.beam else {}

    proc, port = start_server(args.checkpoint, extra)
    try:
        client_loop(port, 0, 3, body)  # warm-up
        before = rss_mib(proc.pid)
        phases = [run_phase(port, proc.pid, c, args.requests, body, args.per_request)
                  for c in clients]
        peak = rss_mib(proc.pid, "VmHWM")
        served = info(port)
    finally:
        proc.terminate()
        proc.wait(60)
    sent = [s for i in range(max(clients))
            for texts in sentences_of(i, args.requests, args.per_request) for s in texts]
    file_rate = time_file(args.checkpoint, sent, args.beam, args.threads)

    print(f"\nserver: {served['name']} step {served['step']}, {served['parameters']:,} "
          f"parameters; {served['served']['batches']} batches for "
          f"{served['served']['sentences']} sentences")
    print(f"resident memory: {before:.0f} MiB before the load, peak {peak:.0f} MiB\n")
    print("| clients | requests | sentences/s | p50 ms | p95 ms | p99 ms | RSS after MiB | "
          "cores used: server / clients | sentences a batch | failed |\n"
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for phase in phases:
        print(phase.row())
    print(f"\nTranslator.translate on the same {len(sent)} sentences as one file: "
          f"{file_rate:.1f} sentences/s (median of 3)")
    if args.json:
        args.json.write_text(json.dumps({
            "phases": [{"clients": p.clients, "requests": p.requests,
                        "sentences_per_s": p.sentences / p.seconds,
                        "latency_ms": percentiles(p.latencies_ms), "rss_mib": p.rss_mib,
                        "server_cores": p.server_cpu / p.seconds,
                        "client_cores": p.client_cpu / p.seconds,
                        "sentences_per_batch": p.sentences / max(1, p.batches),
                        "failed": p.failed} for p in phases],
            "rss_before_mib": before, "rss_peak_mib": peak, "file_sentences_per_s": file_rate,
            "info": served}, indent=1))
    failed = sum(p.failed for p in phases)
    if failed:
        print(f"{failed} requests failed", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
