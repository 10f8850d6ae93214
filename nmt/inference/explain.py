"""What the model looked at: attention matrices (pieces and words) and a step-by-step account
of a greedy translation, for `nmt translate --attention/--explain`."""

from __future__ import annotations

import torch

from nmt.inference.translator import Translation, Translator

WORD_START = "\u2581"  # SentencePiece's word-boundary mark


def word_groups(pieces: list[str]) -> list[list[int]]:
    """Indices of the pieces that make up each word (a piece starting with ▁ opens a word)."""
    groups: list[list[int]] = []
    for i, p in enumerate(pieces):
        if p.startswith(WORD_START) or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def words_of(pieces: list[str], groups: list[list[int]]) -> list[str]:
    return ["".join(pieces[i] for i in g).replace(WORD_START, "") or WORD_START for g in groups]


def merge_to_words(matrix: torch.Tensor, src_groups: list[list[int]],
                   tgt_groups: list[list[int]]) -> torch.Tensor:
    """(T, S) piece attention -> (T', S') word attention: a source word gets the sum of its
    pieces' weights, a target word the mean of its pieces' rows, so rows still sum to 1."""
    cols = torch.stack([matrix[:, g].sum(dim=1) for g in src_groups], dim=1)  # (T, S')
    return torch.stack([cols[g].mean(dim=0) for g in tgt_groups])  # (T', S')


def attention_record(translator: Translator, tr: Translation) -> dict:
    """JSON-ready attention of the best hypothesis: rows are target pieces (EOS last)."""
    hyp = tr.hypotheses[0]
    src_pieces = tr.src_pieces
    tgt_pieces = translator.target_pieces(hyp)
    matrix = hyp.attention if hyp.attention is not None else torch.zeros(len(tgt_pieces), 0)
    record = {"source": tr.source, "translation": tr.text, "source_pieces": src_pieces,
              "target_pieces": tgt_pieces, "attention": _rounded(matrix)}
    if src_pieces:
        sg, tg = word_groups(src_pieces), word_groups(tgt_pieces[:-1]) + [[len(tgt_pieces) - 1]]
        record["source_words"] = words_of(src_pieces, sg)
        record["target_words"] = words_of(tgt_pieces, tg)
        record["word_attention"] = _rounded(merge_to_words(matrix, sg, tg))
    return record


def _rounded(m: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 6) for x in row] for row in m]


def explain_lines(translator: Translator, tr: Translation, top: int = 3) -> list[str]:
    """One line per output step: the chosen piece, the alternatives with probabilities, and the
    most-attended source pieces."""
    hyp = tr.hypotheses[0]
    pieces = translator.target_pieces(hyp)
    source, target = translator.language_names()
    lines = [f"{source}: {tr.source}", f"pieces: {' '.join(tr.src_pieces)}"]
    for t, piece in enumerate(pieces):
        alts = ", ".join(f"{translator.tokenizer.tgt.id_to_piece(i)} {p:.2f}"
                         for i, p in (hyp.alternatives or [[]] * len(pieces))[t])
        looked = ""
        if hyp.attention is not None and tr.src_pieces:
            w = hyp.attention[t]
            k = min(top, w.numel())
            idx = [i for i in w.topk(k).indices.tolist() if w[i] > 0]
            looked = ", ".join(f"{tr.src_pieces[i]} {float(w[i]):.2f}" for i in idx) or "-"
        lines.append(f"{t + 1:>3}  {piece:<14} top: {alts:<40} attends: {looked}")
    lines.append(f"{target}: {tr.text}")
    return lines
