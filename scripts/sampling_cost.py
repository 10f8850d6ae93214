"""What subword sampling (data.sampling_alpha) costs the data pipeline, side by side in one run on
a config's real data: the prepared ids against sampled segmentations of the same batches.

    NMT_DATA_DIR=../shared/data python scripts/sampling_cost.py -c configs/en-pt.yaml \\
        --set data.sampling_alpha=0.1 [--set data.sampling_nbest=64] [--batches 200] [--updates 8]

1. collate: the first N batches of epoch 0, collated with the prepared ids and with sampling,
   alternating batch by batch; the sampler's word cache starts empty, so a first pass is cold
   and a second pass over the same batches warm. sentencepiece's own sampler (C++, but not
   repeatable from one process to the next) is timed beside them for reference.
2. size: every batch of epoch 0, sampled: the pieces per sentence against the prepared ones,
   the whole batch's padded tokens (sentences x widest pair, as train.batch_tokens counts them)
   against the budget, the parts it is cut into to fit, and the padding.
3. updates: K training updates of the config's model on each of K batches, once with each
   collate (in alternating order), in one process; the median update, the median ratio of a
   batch's sampled update to its prepared one (steadier than the times on a busy machine), the
   collate's share.

Data are prepared first if needed (with sampling on, the prepared data must record each pair's
line). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nmt.config import load_config
from nmt.data.batching import Dataset, Resegmented, epoch_batches, padding_fraction, prepared_ids
from nmt.data.prepare import prepare
from nmt.data.sampling import describe
from nmt.fast import kernels
from nmt.model.seq2seq import build_model
from nmt.train import build_optimizer
from nmt.training.trainer import Trainer


class Native:
    """sentencepiece's own sampling, for reference: its draws do not repeat across processes."""

    def __init__(self, processor, alpha: float, nbest: int) -> None:
        self.processor, self.alpha, self.nbest = processor, alpha, nbest

    def sample(self, sentences, rng) -> list[list[int]]:
        return self.processor.encode(list(sentences), enable_sampling=True, alpha=self.alpha,
                                     nbest_size=self.nbest, num_threads=1)


def ms(seconds: list[float]) -> str:
    median, mean = 1000 * statistics.median(seconds), 1000 * statistics.mean(seconds)
    return f"{median:.1f} ms (mean {mean:.1f})"


def time_collates(collates: dict, batches: list[np.ndarray]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in collates}
    for position, index in enumerate(batches):
        names = list(collates) if position % 2 == 0 else list(reversed(collates))
        for name in names:
            began = time.perf_counter()
            collates[name](index, 0, position)
            times[name].append(time.perf_counter() - began)
    return times


def batch_sizes(sampled, data: Dataset, batches: list[np.ndarray], budget: int) -> dict:
    """How much the sampled batches grew: pieces against the prepared ones, each whole batch's
    padded tokens against the budget, and the parts it was cut into to fit."""
    over, parts, pieces, fixed, padded, padded_fixed = [], [], [0, 0], [0, 0], [0, 0], 0
    for position, index in enumerate(batches):
        cut = sampled(index, 0, position)
        width = max(max(int(b.src.shape[1]), int(b.tgt_in.shape[1])) for b in cut)
        over.append(len(index) * width / budget)
        parts.append(len(cut))
        pieces[0] += sum(int(b.src_len.sum()) for b in cut)
        pieces[1] += sum(b.n_tokens for b in cut) - len(index)
        padded[0] += sum(b.src.numel() for b in cut)
        padded[1] += sum(b.tgt_in.numel() for b in cut)
        fixed[0] += int(data.src_len[index].sum())
        fixed[1] += int(data.tgt_len[index].sum())
        padded_fixed += len(index) * (int(data.src_len[index].max())
                                      + int(data.tgt_len[index].max()) + 1)
    over = np.array(over)
    return {"batches": len(over), "over": float((over > 1).mean()),
            "p50": float(np.median(over)), "p90": float(np.quantile(over, 0.9)),
            "p99": float(np.quantile(over, 0.99)), "max": float(over.max()),
            "parts": float(np.mean(parts)), "src": pieces[0] / fixed[0],
            "tgt": pieces[1] / fixed[1],
            "padding": 1 - (pieces[0] + pieces[1] + sum(map(len, batches))) / sum(padded),
            "padded": sum(padded) / padded_fixed}


def time_updates(cfg, data: Dataset, collates: dict, batches: list[np.ndarray],
                 vocab: tuple[int, int]) -> dict:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, *vocab, kernels.FUSED)
    optimizer, schedule = build_optimizer(cfg.train, model)
    spent = {"collate": 0.0}

    def timed(inner):
        def call(index, epoch, position):
            began = time.perf_counter()
            batch = inner(index, epoch, position)
            spent["collate"] += time.perf_counter() - began
            return batch
        return call

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, optimizer, schedule, data, lambda: None, cfg.train,
                          Path(run_dir), {}, torch.device("cpu"))
        out: dict[str, dict[str, list[float]]] = {n: {"update": [], "collate": []}
                                                  for n in collates}
        for k, index in enumerate(batches):
            names = list(collates) if k % 2 == 0 else list(reversed(collates))
            for name in names:
                trainer.collate = timed(collates[name])
                trainer.progress.batch = k
                spent["collate"] = 0.0
                began = time.perf_counter()
                trainer.update([index], cfg.train.lr)
                if k > 0:  # the first update of a process warms up
                    out[name]["update"].append(time.perf_counter() - began)
                    out[name]["collate"].append(spent["collate"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--batches", type=int, default=200, help="batches whose collate is timed")
    parser.add_argument("--updates", type=int, default=8, help="batches updated on, each way")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    d, t = cfg.data, cfg.train
    if not d.sampling_alpha:
        parser.error("sampling is off: add --set data.sampling_alpha=A")
    if t.threads:
        torch.set_num_threads(t.threads)
    prepared = prepare(d)
    data = Dataset.load(prepared.ids("train"))
    tok = prepared.tokenizer()
    sources = prepared.lines("train", prepared.src_lang)
    targets = prepared.lines("train", prepared.tgt_lang)
    batches = epoch_batches(data.widths, data.corpus, [c.weight for c in d.corpora],
                            t.batch_tokens, t.seed, 0)
    sampled = Resegmented(data, sources, targets,
                          *tok.samplers(d.spm_type, d.sampling_alpha, d.sampling_nbest), t.seed,
                          t.batch_tokens)
    native_src = Native(tok.src, d.sampling_alpha, d.sampling_nbest)
    native_tgt = native_src if tok.tgt is tok.src else Native(tok.tgt, d.sampling_alpha,
                                                              d.sampling_nbest)
    native = Resegmented(data, sources, targets, native_src, native_tgt, t.seed, t.batch_tokens)
    fixed = prepared_ids(data)
    print(f"{args.config}: {len(data):,} training pairs, {len(batches):,} batches of <= "
          f"{t.batch_tokens:,} tokens per epoch; sampling: "
          f"{describe(d.spm_type, d.sampling_alpha, d.sampling_nbest)}; "
          f"{torch.get_num_threads()} torch threads\n")

    first = batches[:args.batches]
    cold = time_collates({"prepared ids": fixed, "sampled": sampled,
                          "sentencepiece's sampler": native}, first)
    warm = time_collates({"prepared ids": fixed, "sampled": sampled,
                          "sentencepiece's sampler": native}, first)
    print(f"| collate of one batch ({len(first)} batches, median) | first pass | second pass |")
    print("| --- | ---: | ---: |")
    for name in cold:
        print(f"| {name} | {ms(cold[name])} | {ms(warm[name])} |")

    began = time.perf_counter()
    sizes = batch_sizes(sampled, data, batches, t.batch_tokens)
    pad = padding_fraction(batches, data.src_len, data.tgt_len)
    print(f"\nsampled epoch 0 in {time.perf_counter() - began:.1f} s: pieces per sentence x "
          f"{sizes['src']:.3f} (en), x {sizes['tgt']:.3f} (pt) the prepared ones; a whole "
          f"batch's padded tokens / train.batch_tokens: median {sizes['p50']:.2f}, 90% "
          f"{sizes['p90']:.2f}, 99% {sizes['p99']:.2f}, max {sizes['max']:.2f}; "
          f"{sizes['over']:.1%} of {sizes['batches']:,} batches over the budget, cut into "
          f"{sizes['parts']:.2f} parts on average; padding {sizes['padding']:.1%} (prepared "
          f"ids: {pad:.1%}); padded tokens in all x {sizes['padded']:.3f}")

    picked = batches[args.batches:args.batches + args.updates + 1]
    updates = time_updates(cfg, data, {"prepared ids": fixed, "sampled": sampled}, picked,
                           (tok.src_vocab_size, tok.tgt_vocab_size))
    print(f"\n| training update ({len(picked) - 1} batches, each way, median) | update | "
          f"x prepared ids | of which collate | share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = updates["prepared ids"]["update"]
    for name, times in updates.items():
        ratio = statistics.median(u / b for u, b in zip(times["update"], base))
        share = statistics.median(c / u for c, u in zip(times["collate"], times["update"]))
        print(f"| {name} | {ms(times['update'])} | {ratio:.2f} | {ms(times['collate'])} | "
              f"{share:.1%} |")


if __name__ == "__main__":
    main()
