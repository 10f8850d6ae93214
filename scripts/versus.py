"""Speed of this checkout against another commit's, side by side in one process.

    git worktree add /tmp/old 9db9e7c
    python scripts/versus.py --old /tmp/old [--batches 60] [--sentences 300] [--turns 5]
        [--precision fp32] [--checkpoint runs/NAME/best.pt]

The other checkout's `nmt` package is copied into a temporary folder as `nmt_old` (its imports
renamed) and imported beside this one. Each trains its own copy of the same initial model of
configs/bench.yaml on the same batches, taking turns on every batch, this checkout in its
config's train.precision (auto: bf16 where the CPU has it) and the other in its own default;
then each translates the same test sentences with beam 5 on the same weights, in turns: in each
one's default precision, then this checkout in fp32, bf16 and int8 against the other's fp32 and
int8, with the BLEU of each (on `--checkpoint`'s trained weights, else the weights that the
training left). Prints new speed
÷ old speed as the ratio of the totals (medians for search) and as the median of the
side-by-side ratios, which a burst of other work on a shared machine moves less.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import sacrebleu
import torch

from nmt import checkpoint
from nmt import precision as numerics
from nmt.config import load_config
from nmt.data.batching import Dataset, collate, token_batches
from nmt.data.prepare import prepare
from nmt.fast import kernels
from nmt.inference.translator import Translator
from nmt.model.seq2seq import build_model
from nmt.train import build_optimizer, seed_everything
from nmt.training.precision import autocast_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import test_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_IMPORT = re.compile(r"\b(from|import) nmt\b")


def import_old(checkout: Path, folder: Path):
    """The checkout's package as `nmt_old` -> its (config, seq2seq, train, translator,
    tokenizer) modules. Its C++ operators move to the namespace `nmt_old`, so that both
    checkouts' operators can be registered in one process."""
    target = folder / "nmt_old"
    shutil.copytree(checkout / "nmt", target)
    for path in target.rglob("*.py"):
        text = _IMPORT.sub(r"\1 nmt_old", path.read_text())
        for name, renamed in (('"nmt.kernels', '"nmt_old.kernels'),
                              ("torch.ops.nmt.", "torch.ops.nmt_old."),
                              ('"nmt::', '"nmt_old::'),  # f"nmt::{name}" too
                              ("nmt_kernels", "nmt_old_kernels")):  # the build's name, its .so
            text = text.replace(name, renamed)
        path.write_text(text)
    for path in target.rglob("*.cpp"):
        path.write_text(re.sub(r"TORCH_LIBRARY(_IMPL)?\(nmt,", r"TORCH_LIBRARY\1(nmt_old,",
                               path.read_text()))
    sys.path.insert(0, str(folder))
    return [importlib.import_module(f"nmt_old.{m}") for m in
            ("config", "model.seq2seq", "train", "inference.translator", "data.tokenizer")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="another checkout of nmt")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bench.yaml")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="this checkout's train.precision (default: the config's)")
    ap.add_argument("--checkpoint", type=Path,
                    help="trained weights to search with (a checkpoint of --config's model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config, seq2seq, train, translator, tokenizer = import_old(args.old, Path(tmp))
        cfg, ocfg = load_config(args.config), config.load_config(args.config)
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
        prepared = prepare(cfg.data, progress=False)
        data = Dataset.load(prepared.ids("train"))
        tok = prepared.tokenizer()
        seed_everything(cfg.train.seed)
        new = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, kernels.FUSED)
        old = seq2seq.build_model(ocfg.model, tok.src_vocab_size, tok.tgt_vocab_size)
        old.load_state_dict(new.state_dict())
        models = {"new": (new, build_optimizer(cfg.train, new)[0]),
                  "old": (old, train.build_optimizer(ocfg.train, old)[0])}
        times: dict[str, list[float]] = {"new": [], "old": []}
        tokens = 0
        batches = token_batches(data.widths, cfg.train.batch_tokens, cfg.train.seed, 0)
        cpu = torch.device("cpu")
        dtype = {"new": autocast_dtype(args.precision or cfg.train.precision, cpu), "old": None}
        for i, index in enumerate(batches[:args.batches + 5]):
            b = collate(data, index)
            for name in ("new", "old") if i % 2 == 0 else ("old", "new"):
                model, optimizer = models[name]
                model.train()
                start = time.perf_counter()
                with numerics.autocast(dtype[name], cpu):
                    loss, n = model.loss(b.src, b.src_len, b.tgt_in, b.tgt_out)
                (loss / n).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if i >= 5:  # the first batches warm up
                    times[name].append(time.perf_counter() - start)
            tokens += n if i >= 5 else 0
        report("training, tgt tok/s", tokens, times, sum)
        sources, refs = test_pairs(prepared, args.sentences, cfg.data.max_pieces)
        if args.checkpoint:
            new.load_state_dict(checkpoint.load(checkpoint.resolve(args.checkpoint))["model"])
        old.load_state_dict(new.state_dict())
        old_tok = tokenizer.Tokenizer(tok.src_model, tok.tgt_model)
        searches = [("default", cfg.decode.precision, ocfg.decode),
                    ("fp32", "fp32", ocfg.decode), ("bf16", "bf16", ocfg.decode),
                    ("int8", "int8", replace(ocfg.decode, int8=True))]
        for label, new_precision, old_decode in searches:
            times: dict[str, list[float]] = {"new": [], "old": []}
            bleu = {}
            for turn in range(args.turns):
                for name in ("new", "old") if turn % 2 == 0 else ("old", "new"):
                    t = (Translator(new.eval(), tok, replace(cfg.decode, precision=new_precision),
                                    400)
                         if name == "new" else translator.Translator(
                             old.eval(), old_tok, old_decode, 400))
                    start = time.perf_counter()
                    out = t.translate(sources, beam=5)
                    times[name].append(time.perf_counter() - start)
                    bleu[name] = sacrebleu.corpus_bleu([x.text for x in out], [refs]).score
            report(f"beam 5, new {label} (old {'int8' if old_decode.int8 else 'default'}), "
                   f"sent/s", len(sources), times, statistics.median)
            print(f"  BLEU: new {bleu['new']:.2f}, old {bleu['old']:.2f}", flush=True)


def report(what: str, amount: int, times: dict[str, list[float]], total) -> None:
    new, old = amount / total(times["new"]), amount / total(times["old"])
    sides = statistics.median(o / n for n, o in zip(times["new"], times["old"]))
    print(f"{what}: new {new:,.1f}, old {old:,.1f}; new ÷ old {new / old:.3f}, median of the "
          f"side-by-side ratios {sides:.3f}", flush=True)


if __name__ == "__main__":
    main()
