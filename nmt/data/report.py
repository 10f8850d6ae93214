"""The summary table printed by `nmt data prepare`, and the lines training logs about its data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nmt.data.batching import Dataset, epoch_batches, epoch_share, padding_fraction, weighted
from nmt.data.prepare import Prepared


def batching_line(data: Dataset, batch_tokens: int, seed: int,
                  weights: Sequence[float] = ()) -> str:
    batches = epoch_batches(data.widths, data.corpus, weights, batch_tokens, seed, 0)
    pad = padding_fraction(batches, data.src_len, data.tgt_len)
    return f"{len(batches):,} batches of <= {batch_tokens:,} tokens per epoch, {pad:.1%} padding"


def composition_line(data: Dataset, weights: Sequence[float], names: Sequence[str]) -> str:
    """Each corpus's training pairs, its weight and its pairs per epoch."""
    sizes = np.bincount(data.corpus, minlength=len(weights)) if data.corpus is not None \
        else np.zeros(len(weights), dtype=np.int64)
    shares = [epoch_share(int(n), w) for n, w in zip(sizes, weights)]
    parts = [f"{name}: {int(n):,} x {w:g} = {share:,}"
             for name, n, w, share in zip(names, sizes, weights, shares)]
    return f"{'; '.join(parts)} ({sum(shares):,} pairs per epoch)"


def summary_table(prepared: Prepared, batch_tokens: int, seed: int,
                  weights: Sequence[float] = (), names: Sequence[str] = ()) -> str:
    s = prepared.summary
    rows = [("prepared data", str(prepared.path) + (" (cached)" if s.cached else "")),
            ("lines read", f"{s.read:,}")]
    for reason, n in sorted(s.skipped.items()):
        where = ", ".join(s.skipped_where.get(reason, []))
        rows.append((f"  skipped: {reason}", f"{n:,}" + (f"  (first: {where})" if where else "")))
    for reason, n in sorted(s.dropped.items()):
        rows.append((f"  dropped: {reason}", f"{n:,}"))
    rows.append(("pairs kept", f"{s.kept:,}"))
    src, tgt = prepared.src_lang, prepared.tgt_lang
    for split, n in s.splits.items():
        a, b = (s.avg_pieces.get(f"{split}.{lang}", 0) for lang in (src, tgt))
        rows.append((f"  {split}", f"{n:,} pairs, {a:.1f} / {b:.1f} pieces per sentence "
                                   f"({src}/{tgt})"))
    rows.append(("vocabulary", f"{src} {s.vocab.get(src, 0):,}, {tgt} {s.vocab.get(tgt, 0):,}"))
    train = Dataset.load(prepared.ids("train"))
    rows.append(("batching", batching_line(train, batch_tokens, seed, weights)))
    if weighted(weights):
        rows.append(("corpus weights", composition_line(train, weights, names)))
    rate = s.read / s.seconds if s.seconds else 0.0
    rows.append(("time", f"{s.seconds:.1f} s ({rate:,.0f} pairs/s)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
