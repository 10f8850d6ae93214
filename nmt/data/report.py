"""The summary table printed by `nmt data prepare`."""

from __future__ import annotations

from nmt.data.batching import Dataset, padding_fraction, token_batches
from nmt.data.prepare import Prepared


def batching_line(data: Dataset, batch_tokens: int, seed: int) -> str:
    batches = token_batches(data.widths, batch_tokens, seed, 0)
    pad = padding_fraction(batches, data.src_len, data.tgt_len)
    return f"{len(batches):,} batches of <= {batch_tokens:,} tokens per epoch, {pad:.1%} padding"


def summary_table(prepared: Prepared, batch_tokens: int, seed: int) -> str:
    s = prepared.summary
    rows = [("prepared data", str(prepared.path) + (" (cached)" if s.cached else "")),
            ("lines read", f"{s.read:,}")]
    for reason, n in sorted(s.skipped.items()):
        where = ", ".join(s.skipped_where.get(reason, []))
        rows.append((f"  skipped: {reason}", f"{n:,}" + (f"  (first: {where})" if where else "")))
    for reason, n in sorted(s.dropped.items()):
        rows.append((f"  dropped: {reason}", f"{n:,}"))
    rows.append(("pairs kept", f"{s.kept:,}"))
    for split, n in s.splits.items():
        en, pt = s.avg_pieces.get(f"{split}.en", 0), s.avg_pieces.get(f"{split}.pt", 0)
        rows.append((f"  {split}", f"{n:,} pairs, {en:.1f} / {pt:.1f} pieces per sentence (en/pt)"))
    rows.append(("vocabulary", f"en {s.vocab.get('en', 0):,}, pt {s.vocab.get('pt', 0):,}"))
    train = Dataset.load(prepared.ids("train"))
    rows.append(("batching", batching_line(train, batch_tokens, seed)))
    rate = s.read / s.seconds if s.seconds else 0.0
    rows.append(("time", f"{s.seconds:.1f} s ({rate:,.0f} pairs/s)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
