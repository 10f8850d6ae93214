"""Speed benchmark, in one run on this machine: the fp32 and bf16 matmul peaks, data preparation,
training and translation of configs/bench.yaml in fp32 and bf16 (and int8 search), and
optionally the same work by reference toolkits.

    python scripts/bench.py                          # nmt alone (make bench)
    python scripts/bench.py --peer onmt --peer joey  # and the peers, same data, same updates

Prints a table to stdout and writes --out (JSON). Shared machines are noisy: every speed is the
median of several timed windows, and only ratios measured in the same run are compared.

Training counts target tokens without padding, with EOS (as the peers count them), over
`--updates` updates after `--warmup`. Model FLOPs per target token are counted by torch's
FlopCounterMode on real batches (matrix products of forward and backward). Translation runs on
the first `--sentences` test sentences with the model just trained (fp32), greedy and beam 5,
beam 5 in bf16 and in int8 too. bf16 is measured where the CPU computes it natively
(`nmt.precision.cpu_bf16`). The peers are compared with nmt in fp32, as they train. Peers
(`../shared/bench/run-peer.sh`) train the same number of updates on the same SentencePiece
pieces and translate the same sentences; their BLEU is scored after joining their pieces.
After each peer, nmt's training (more updates of the same run) and beam search (the same
model) are measured again, and the peer is compared with the mean of nmt's measurements just
before and just after it: the machine's speed drifts over a run of 20 minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import sacrebleu
import torch
from torch.utils.flop_counter import FlopCounterMode

from nmt import precision as numerics
from nmt.config import Config, load_config
from nmt.data.batching import Dataset, collate, token_batches
from nmt.data.prepare import Prepared, prepare
from nmt.fast import kernels
from nmt.inference.translator import Translator
from nmt.model.seq2seq import build_model, count_parameters
from nmt.train import build_optimizer, seed_everything
from nmt.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "bench"
Pairs = tuple[list[str], list[str]]  # test sources, references
log = logging.getLogger("bench")


def peak_rss_reset() -> None:
    """Starts a new peak-memory window (Linux: VmHWM is reset by clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def matmul_peak(dtype: torch.dtype = torch.float32, reps: int = 7) -> float:
    """Median GFLOP/s of torch.mm in `dtype` at the current thread count (the best of 3
    sizes)."""
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        inner = max(1, int(2e9 // (2 * n ** 3)))
        times = []
        for i in range(reps + 2):
            start = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=c)
            if i >= 2:
                times.append(time.perf_counter() - start)
        best = max(best, 2 * n ** 3 * inner / statistics.median(times) / 1e9)
    return best


def prepare_speed(cfg: Config) -> float:
    """Pairs/s of a fresh `prepare` (reading, cleaning, SentencePiece training, encoding)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = prepare(replace(cfg.data, prepared_dir=tmp), progress=False)
        return fresh.summary.read / fresh.summary.seconds


class Training:
    """A model of `cfg` training on the bench batches, kept alive so that its speed can be
    measured again later in the run, next to each peer."""

    def __init__(self, cfg: Config, prepared: Prepared) -> None:
        seed_everything(cfg.train.seed)
        tok = prepared.tokenizer()
        self.model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                 kernels.FUSED)
        t = cfg.train
        optimizer, self.schedule = build_optimizer(t, self.model)
        self.data = Dataset.load(prepared.ids("train"))
        with tempfile.TemporaryDirectory() as tmp:
            self.trainer = Trainer(self.model, optimizer, self.schedule, self.data, lambda: None,
                                   t, Path(tmp), {}, torch.device("cpu"))
        self.batches = token_batches(self.data.widths, t.batch_tokens, t.seed, 0)
        self.step = 0
        self.sentences: list[int] = []  # per timed update

    def flop_per_tgt_token(self) -> float:
        """Model FLOPs per target token of forward and backward, on the first three batches."""
        flops = FlopCounterMode(display=False)
        counted = 0
        # FlopCounterMode does not see inside the fused kernels: count the plain path, which
        # computes the same products
        with flops, mock.patch("nmt.fast.kernels.usable", lambda *tensors: False):
            for index in self.batches[:3]:
                b = collate(self.data, index)
                loss, n = self.model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out)
                loss.backward()
                counted += n
        self.model.zero_grad(set_to_none=True)
        return flops.get_total_flops() / counted

    def window(self, updates: int) -> tuple[float, float, float]:
        """Runs `updates` updates -> (tgt tokens/s, src+tgt tokens/s, updates/s)."""
        tgt = srctgt = 0
        start = time.perf_counter()
        for _ in range(updates):
            index = self.batches[self.step % len(self.batches)]
            self.step += 1
            done = self.trainer.update([index], self.schedule.lr_at(self.step))
            tgt += done[1]
            srctgt += done[1] + int(self.data.src_len[index].sum())
            self.sentences.append(len(index))
        seconds = time.perf_counter() - start
        return tgt / seconds, srctgt / seconds, updates / seconds

    def tgt_tokens_per_s(self, updates: int, windows: int) -> float:
        """The median target tokens/s of `windows` more windows of `updates` updates, after
        a few untimed ones (the caches are cold after a pause)."""
        self.window(3)
        return statistics.median(self.window(updates)[0] for _ in range(windows))


def train_speed(cfg: Config, prepared: Prepared, warmup: int, updates: int,
                windows: int) -> tuple[dict, Training]:
    training = Training(cfg, prepared)
    flop_per_token = training.flop_per_tgt_token()
    peak_rss_reset()
    training.window(warmup)
    training.sentences.clear()
    rates = [training.window(updates // windows) for _ in range(windows)]
    tgt, src_tgt, per_update = (statistics.median(r) for r in zip(*rates))
    result = {"parameters": count_parameters(training.model), "updates": training.step,
              "sentences_per_batch": statistics.mean(training.sentences),
              "tgt_tokens_per_s": tgt, "src_tgt_tokens_per_s": src_tgt,
              "updates_per_s": per_update, "flop_per_tgt_token": flop_per_token,
              "gflops": flop_per_token * tgt / 1e9, "peak_rss_mib": peak_rss_mib()}
    return result, training


def translate_speed(model: torch.nn.Module, cfg: Config, prepared: Prepared, test: Pairs,
                    beam: int, repeats: int, precision: str = "fp32") -> dict:
    sources, refs = test
    translator = Translator(model.eval(), prepared.tokenizer(),
                            replace(cfg.decode, precision=precision), 4 * cfg.data.max_pieces)
    peak_rss_reset()
    times, out = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = translator.translate(sources, beam=beam)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = sum(len(t.hypotheses[0].tokens) + 1 for t in out)  # with EOS
    hyps = [t.text for t in out]
    return {"beam": beam, "precision": translator.precision(), "sentences": len(sources),
            "sentences_per_s": len(sources) / seconds,
            "tgt_tokens_per_s": tokens / seconds, "mean_output_pieces": tokens / len(out),
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "peak_rss_mib": peak_rss_mib()}


class Alongside:
    """nmt measured again after each peer: its training speed (more windows of the same
    training) and its beam-5 speed (the same model as before). Each peer is compared with the
    mean of the measurements just before and just after it, as this machine's speed drifts
    over a run."""

    def __init__(self, training: Training, model: torch.nn.Module, cfg: Config,
                 prepared: Prepared, test: Pairs, first: dict, args: argparse.Namespace
                 ) -> None:
        self.training, self.model, self.cfg = training, model, cfg
        self.prepared, self.test, self.args = prepared, test, args
        self.last = first  # {"train": tgt tok/s, "beam5": sent/s[, "beam5_int8": sent/s]}

    def measure(self) -> dict:
        """Measures now -> {"before", "after", and per figure the mean of the two}."""
        a = self.args
        now = {"train": self.training.tgt_tokens_per_s(a.updates // a.windows,
                                                       a.alongside_windows)}
        searches = [("beam5", "fp32")] + ([("beam5_int8", "int8")] if "beam5_int8" in self.last
                                          else [])
        for name, precision in searches:
            now[name] = translate_speed(self.model, self.cfg, self.prepared, self.test, 5,
                                        a.repeats, precision)["sentences_per_s"]
        before, self.last = self.last, now
        return {"before": before, "after": now,
                **{k: (before[k] + now[k]) / 2 for k in now}}


def test_pairs(prepared: Prepared, sentences: int, max_pieces: int) -> Pairs:
    """The first `sentences` test pairs whose source fits every toolkit: fewer than
    `max_pieces` pieces, so that with its end-of-sentence token it fits fairseq's positions."""
    src = prepared.lines("test", prepared.src_lang)
    ref = prepared.lines("test", prepared.tgt_lang)
    fits = [len(p) < max_pieces for p in prepared.tokenizer().src.encode(src)]
    pairs = [(s, r) for s, r, ok in zip(src, ref, fits) if ok][:sentences]
    return [s for s, _ in pairs], [r for _, r in pairs]


def export_pieces(prepared: Prepared, folder: Path, test: Pairs) -> None:
    """train/dev/test.{en,pt} as space-separated SentencePiece pieces, for the peers, whose
    templates name the source side `en` and the target side `pt` (whatever the languages); the
    test split is `test` (`test_pairs`)."""
    tok = prepared.tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    sides = (("en", prepared.src_lang, tok.src), ("pt", prepared.tgt_lang, tok.tgt))
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        for i, (label, lang, sp) in enumerate(sides):
            lines = test[i] if split == "test" else prepared.lines(split, lang)
            pieces = sp.encode(lines, out_type=str)
            (folder / f"{name}.{label}").write_text(
                "".join(" ".join(p) + "\n" for p in pieces), encoding="utf-8")


def run_peer(kind: str, data: Path, out: Path, updates: int, prepared: Prepared, test: Pairs,
             max_pieces: int) -> dict:
    env = {**os.environ, "BATCH": "64", "VOC": "32000", "LOG_FREQ": "25", "BEAM": "5",
           "MAXLEN": str(max_pieces)}  # the same length filter as ours
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # the peers refuse to overwrite earlier output
    proc = subprocess.run(["bash", str(PEERS / "run-peer.sh"), kind, str(data), str(out),
                           str(updates)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(p.read_text(errors="replace")[-800:] for p in sorted(out.glob("*.out")))
        raise RuntimeError(f"{kind} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}{logs}")
    speed = (out / "speed.txt").read_text()
    hyps_pieces = (out / "test.hyp.pt").read_text(encoding="utf-8").splitlines()
    tok = prepared.tokenizer()
    hyps = [tok.tgt.decode_pieces(line.split()) for line in hyps_pieces]
    refs = test[1]
    seconds = translate_seconds(kind, out / "translate.out")
    return {"kind": kind, "tgt_tokens_per_s": median_tokens_per_s(speed),
            "translate_seconds": seconds,
            "beam5_sentences_per_s": len(refs) / seconds if seconds else None,
            "mean_output_pieces": sum(len(h.split()) + 1 for h in hyps_pieces)
            / max(1, len(hyps_pieces)),
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score if len(hyps) == len(refs)
            else None, "wall_s": time.perf_counter() - start, "speed": speed.strip()}


def median_tokens_per_s(speed: str) -> float | None:
    """The median target tokens/s in the output of ../shared/bench/parse_speed.py."""
    median = re.search(r"^tgt_tok_s: n=\d+ median=([\d.e+]+)", speed, re.M)
    return float(median.group(1)) if median else None


def translate_seconds(kind: str, path: Path) -> float | None:
    """The translation time each peer reports (model loading excluded where it says so)."""
    text = path.read_text(errors="replace")
    patterns = {"joey": r"Generation took ([\d.]+)", "onmt": r"Total translation time \(s\): "
                r"([\d.]+)", "fairseq": r"Translation time: ([\d.]+)"}
    m = re.search(patterns.get(kind, r"$^"), text)
    if m:
        return float(m.group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)",
                     text)
    if wall:
        h, m_, s = wall.groups()
        return int(h or 0) * 3600 + int(m_) * 60 + float(s)
    return None


def table(r: dict) -> str:
    t, g, b = r["train"], r["greedy"], r["beam5"]
    bf16_peak = (f", bf16 matmul peak {r['matmul_bf16_gflops']:.1f} GFLOP/s (the larger of "
                 f"{' and '.join(f'{x:.1f}' for x in r['matmul_bf16_gflops_runs'])})"
                 if r.get("matmul_bf16_gflops") else f", bf16 not measured ({r['bf16']})")
    lines = [
        f"machine: {r['threads']} threads, fp32 matmul peak {r['matmul_gflops']:.1f} GFLOP/s "
        f"(the larger of {' and '.join(f'{x:.1f}' for x in r['matmul_gflops_runs'])})"
        f"{bf16_peak}, fused CPU kernels {'on' if r['fused_kernels'] else 'off'}",
        f"data preparation: {r['prepare_pairs_per_s']:,.0f} pairs/s",
        f"training ({t['parameters']:,} parameters, {t['sentences_per_batch']:.1f} sentences "
        f"per batch): {t['tgt_tokens_per_s']:,.0f} tgt tok/s, {t['src_tgt_tokens_per_s']:,.0f} "
        f"src+tgt tok/s, {t['updates_per_s']:.2f} updates/s, "
        f"{t['flop_per_tgt_token'] / 1e6:.1f} MFLOP/tgt token = {t['gflops']:.1f} GFLOP/s = "
        f"{t['gflops'] / r['matmul_gflops']:.0%} of peak, peak RSS {t['peak_rss_mib']:,.0f} MiB",
    ]
    if "train_bf16" in r:
        t16 = r["train_bf16"]
        lines.append(f"training in bf16: {t16['tgt_tokens_per_s']:,.0f} tgt tok/s = "
                     f"{t16['tgt_tokens_per_s'] / t['tgt_tokens_per_s']:.2f}x fp32's, "
                     f"{t16['updates_per_s']:.2f} updates/s, {t16['gflops']:.1f} GFLOP/s = "
                     f"{t16['gflops'] / r['matmul_bf16_gflops']:.0%} of the bf16 peak")
    for d in (g, b, r.get("beam5_bf16"), r["beam5_int8"]):
        if d is None:
            continue
        lines.append(f"translation beam {d['beam']} {d['precision']}: "
                     f"{d['sentences_per_s']:.1f} sent/s, "
                     f"{d['tgt_tokens_per_s']:,.0f} tgt tok/s, BLEU {d['bleu']:.2f} "
                     f"({d['mean_output_pieces']:.1f} pieces/sentence), peak RSS "
                     f"{d['peak_rss_mib']:,.0f} MiB")
    for key in ("beam5_bf16", "beam5_int8"):
        if key in r:
            q = r[key]
            ratio = q["sentences_per_s"] / b["sentences_per_s"]
            lines.append(f"{q['precision']} beam 5: {ratio:.2f}x the fp32 speed, BLEU "
                         f"{q['bleu'] - b['bleu']:+.2f}")
    if r.get("peers"):
        lines += ["", "nmt's speeds next to a peer are the means of nmt's measurements just "
                      "before and just after it.", "",
                  "| toolkit | train tgt tok/s | nmt next to it | nmt ÷ peer | beam-5 sent/s "
                  "| nmt next to it | nmt ÷ peer | int8 nmt ÷ peer | BLEU | output pieces |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| nmt | {t['tgt_tokens_per_s']:,.0f} | | | {b['sentences_per_s']:.1f} | | "
                  f"| | {b['bleu']:.2f} | {b['mean_output_pieces']:.1f} |"]
        if "general" in r:
            gt, gb = r["general"]["train"], r["general"]["beam5"]
            lines.append(f"| nmt, general score | {gt['tgt_tokens_per_s']:,.0f} | | "
                         f"| {gb['sentences_per_s']:.1f} | | | | {gb['bleu']:.2f} "
                         f"| {gb['mean_output_pieces']:.1f} |")
        nan = float("nan")
        for p in r["peers"]:
            tok, sent, ours = p["tgt_tokens_per_s"], p["beam5_sentences_per_s"], p["nmt"]
            int8 = ours.get("beam5_int8")
            lines.append(
                f"| {p['kind']} | {tok or nan:,.0f} | {ours['train']:,.0f} "
                f"| {ours['train'] / tok if tok else nan:.2f} | {sent or nan:.1f} "
                f"| {ours['beam5']:.1f} | {ours['beam5'] / sent if sent else nan:.2f} "
                f"| {f'{int8 / sent:.2f}' if int8 and sent else ''} "
                f"| {p['bleu'] if p['bleu'] is not None else nan:.2f} "
                f"| {p['mean_output_pieces']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bench.yaml")
    ap.add_argument("--warmup", type=int, default=20, help="untimed updates first")
    ap.add_argument("--updates", type=int, default=180, help="timed updates")
    ap.add_argument("--windows", type=int, default=6, help="timed windows (median reported)")
    ap.add_argument("--alongside-windows", type=int, default=2,
                    help="timed training windows of nmt after each peer")
    ap.add_argument("--sentences", type=int, default=1000, help="test sentences translated")
    ap.add_argument("--repeats", type=int, default=3, help="timed translation repeats")
    ap.add_argument("--peer", action="append", default=[], choices=["joey", "onmt", "fairseq"])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "bench.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    bf16 = numerics.cpu_bf16()
    result: dict = {"config": str(args.config), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "fused_kernels": kernels.load(),
                    "bf16": bf16.describe()}
    log.info("matmul peaks ...")
    result["matmul_gflops_runs"] = [matmul_peak()]  # and again at the end: the larger counts
    if bf16.native:
        result["matmul_bf16_gflops_runs"] = [matmul_peak(torch.bfloat16)]
    log.info("data preparation ...")
    result["prepare_pairs_per_s"] = prepare_speed(cfg)
    prepared = prepare(cfg.data, progress=False)
    test = test_pairs(prepared, args.sentences, cfg.data.max_pieces)
    log.info("training %d + %d updates ...", args.warmup, args.updates)
    result["train"], training = train_speed(cfg, prepared, args.warmup, args.updates,
                                            args.windows)
    if bf16.native:
        log.info("training %d + %d updates in bf16 ...", args.warmup, args.updates)
        result["train_bf16"] = train_speed(
            replace(cfg, train=replace(cfg.train, precision="bf16")), prepared, args.warmup,
            args.updates, args.windows)[0]
    model = copy.deepcopy(training.model)  # translated now and next to each peer
    searches = [("greedy", 1, "fp32"), ("beam5", 5, "fp32")]
    searches += [("beam5_bf16", 5, "bf16")] if bf16.native else []
    for name, beam, precision in [*searches, ("beam5_int8", 5, "int8")]:
        log.info("translating %d sentences, beam %d, %s ...", args.sentences, beam, precision)
        result[name] = translate_speed(model, cfg, prepared, test, beam, args.repeats,
                                       precision)
    result["peers"] = []
    if not args.peer:
        finish(result, args.out)
        return
    data = args.out.parent / "pieces"
    export_pieces(prepared, data, test)
    figures = {k: result[k]["sentences_per_s"] for k in ("beam5", "beam5_int8")}
    additive = Alongside(training, model, cfg, prepared, test,
                         {"train": result["train"]["tgt_tokens_per_s"], **figures}, args)
    for kind in [p for p in args.peer if p != "fairseq"]:
        run_beside(kind, additive, data, args, result)
    if "fairseq" in args.peer:  # fairseq's lstm scores attention with Luong's general score
        general_cfg = load_config(args.config, ["model.attention.score=general"])
        log.info("training with the general score, as fairseq's lstm ...")
        trained, training = train_speed(general_cfg, prepared, args.warmup, args.updates,
                                        args.windows)
        model = copy.deepcopy(training.model)
        result["general"] = {"train": trained, "beam5": translate_speed(
            model, general_cfg, prepared, test, 5, args.repeats)}
        general = Alongside(training, model, general_cfg, prepared, test,
                            {"train": trained["tgt_tokens_per_s"],
                             "beam5": result["general"]["beam5"]["sentences_per_s"]}, args)
        run_beside("fairseq", general, data, args, result)
    finish(result, args.out)


def run_beside(kind: str, ours: Alongside, data: Path, args: argparse.Namespace,
               result: dict) -> None:
    """Runs peer `kind` on the pieces in `data`, then measures nmt again (`ours`); adds both
    to result["peers"]."""
    log.info("peer %s: %d updates and translation ...", kind, args.warmup + args.updates)
    try:
        peer = run_peer(kind, data, args.out.parent / kind, args.warmup + args.updates,
                        ours.prepared, ours.test, ours.cfg.data.max_pieces)
    except RuntimeError as err:  # the other figures still count
        log.error("%s", err)
        return
    log.info("nmt again, after %s ...", kind)
    peer["nmt"] = ours.measure()
    result["peers"].append(peer)


def finish(result: dict, out: Path) -> None:
    """Measures the matmul peak again (a slow phase of the machine must not lower it), then
    writes the JSON and prints the table."""
    log.info("matmul peak again ...")
    result["matmul_gflops_runs"].append(matmul_peak())
    result["matmul_gflops"] = max(result["matmul_gflops_runs"])
    if "matmul_bf16_gflops_runs" in result:
        result["matmul_bf16_gflops_runs"].append(matmul_peak(torch.bfloat16))
        result["matmul_bf16_gflops"] = max(result["matmul_bf16_gflops_runs"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table(result))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
