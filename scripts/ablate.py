"""What each piece of the fast layer (`nmt.fast`) buys, measured side by side in one process.

    python scripts/ablate.py [--precision fp32|bf16] [--batches 60] [--sentences 300] [--repeats 3]
    python scripts/ablate.py --checkpoint runs/en-pt --sentences 1000 --repeats 4

Training: one copy of the configs/bench.yaml model per variant (every piece on; each piece off
alone; every piece off, the plain model), all trained on the same batches with the same
optimizer, the variants taking turns on each batch (in alternating order), so that the
machine's drift reaches them all alike. Beam 5: the model trained with every piece on translates
the same test sentences under each variant, in turns, `--repeats` times. Prints, per variant,
target tokens/s and sentences/s (over all batches; median of the turns), and how much longer
it takes than every piece on: the median over batches (turns) of the ratio of the two times
taken side by side, which a burst of other work on a shared machine moves less than the totals.
1.10 means that turning the piece off makes training (search) 1.10x slower. `--precision bf16`
trains every variant under bfloat16 autocast (`nmt.precision`); the searches run in
`--search-precision` (default `auto`, the default search: int8 where it works, and without the
int8 piece what a translator would pick then). `--checkpoint` measures only the searches, with a
trained model, on its config's test split.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nmt import fast
from nmt import precision as numerics
from nmt.config import load_config
from nmt.data.batching import Dataset, collate, token_batches
from nmt.data.prepare import prepare
from nmt.fast import kernels
from nmt.inference import translator as translator_module
from nmt.inference.translator import Translator, load_translator
from nmt.model.seq2seq import build_model
from nmt.train import build_optimizer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import test_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("ablate")


def variants() -> dict[str, frozenset[str]]:
    every = frozenset(fast.PIECES)
    return {"all pieces": every, **{f"no {p}": every - {p} for p in fast.PIECES},
            "plain (NMT_FAST=0)": frozenset()}


def train(cfg, prepared, batches: int, warmup: int, dtype: torch.dtype | None
          ) -> tuple[dict[str, list[float]], int, torch.nn.Module]:
    """Each variant's seconds per timed batch, the batches' target tokens, and the all-pieces
    model."""
    data = Dataset.load(prepared.ids("train"))
    order = token_batches(data.widths, cfg.train.batch_tokens, cfg.train.seed, 0)
    seed_everything(cfg.train.seed)
    tok = prepared.tokenizer()
    base = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, kernels.FUSED)
    copies = {}
    for name in variants():
        model = copy.deepcopy(base).train()
        copies[name] = (model, build_optimizer(cfg.train, model)[0])
    seconds: dict[str, list[float]] = {name: [] for name in copies}
    tokens = 0
    names = list(copies)
    for i, index in enumerate(order[:warmup + batches]):
        b = collate(data, index)
        for name in names if i % 2 == 0 else names[::-1]:
            model, optimizer = copies[name]
            fast._ON = variants()[name]
            start = time.perf_counter()
            with numerics.autocast(dtype, torch.device("cpu")):
                loss, n = model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out,
                                     cfg.train.label_smoothing)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
        if i >= warmup:
            tokens += n
        if i % 10 == 9:
            log.info("training: %d of %d batches", i + 1, warmup + batches)
    fast._ON = frozenset(fast.PIECES)
    return seconds, tokens, copies["all pieces"][0]


def translate(model, cfg, prepared, sentences: list[str], repeats: int, precision: str
              ) -> dict[str, list[float]]:
    """Each variant's seconds per turn of beam-5 translation."""
    model.eval()
    times: dict[str, list[float]] = {name: [] for name in variants()}
    names = list(times)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fast._ON = variants()[name]
            translator_module.search_precision.cache_clear()  # it asks what the pieces allow
            translator = Translator(model, prepared.tokenizer(),
                                    replace(cfg.decode, precision=precision),
                                    4 * cfg.data.max_pieces)
            start = time.perf_counter()
            translator.translate(sentences, beam=5)
            times[name].append(time.perf_counter() - start)
        log.info("beam 5: %d of %d turns", r + 1, repeats)
    fast._ON = frozenset(fast.PIECES)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bench.yaml")
    ap.add_argument("--batches", type=int, default=60, help="timed batches per variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    ap.add_argument("--sentences", type=int, default=300, help="test sentences translated")
    ap.add_argument("--repeats", type=int, default=3, help="timed translation turns")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="what training computes in")
    ap.add_argument("--search-precision", choices=["auto", "fp32", "bf16", "int8"],
                    default="auto", help="what the searches compute in")
    ap.add_argument("--checkpoint", type=Path,
                    help="a trained run or checkpoint: measure its searches only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if args.checkpoint:
        loaded = load_translator(args.checkpoint)
        cfg, model = loaded.config, loaded.model
    else:
        cfg = load_config(args.config)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    prepared = prepare(cfg.data, progress=False)
    sentences = test_pairs(prepared, args.sentences, cfg.data.max_pieces)[0]
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    if not args.checkpoint:
        trained, tokens, model = train(cfg, prepared, args.batches, args.warmup, dtype)
    searched = translate(model, cfg, prepared, sentences, args.repeats, args.search_precision)
    every = "all pieces"

    def slower(times: dict[str, list[float]], name: str) -> float:
        return statistics.median(t / a for t, a in zip(times[name], times[every]))

    what = (f"{args.checkpoint}" if args.checkpoint else
            f"training in {args.precision}, {args.batches} batches")
    print(f"{what}; search in {args.search_precision}, {torch.get_num_threads()} threads, "
          f"{len(sentences)} sentences, {args.repeats} turns\n")
    print("| variant | train tgt tok/s | time ÷ all pieces' | beam 5 sent/s | "
          "time ÷ all pieces' |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in variants():
        training = ("| | " if args.checkpoint else
                    f"{tokens / sum(trained[name]):,.0f} | {slower(trained, name):.3f} | ")
        print(f"| {name} | {training}"
              f"{len(sentences) / statistics.median(searched[name]):.1f} | "
              f"{slower(searched, name):.3f} |")


if __name__ == "__main__":
    main()
