"""`nmt translate`: run a translator on sentences, a file, stdin or an interactive prompt;
results go to stdout (or --output), logs to stderr. Only the CLI imports this module."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from nmt.errors import UsageError
from nmt.inference.explain import attention_record, explain_lines
from nmt.inference.translator import Translator

log = logging.getLogger(__name__)


def run_translate(translator: Translator, lines: list[str] | None, output: Path | None,
                  beam: int | None, n_best: int, attention_dir: Path | None,
                  explain: bool) -> None:
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output}: is a directory, expected a file")
    if attention_dir is not None and attention_dir.exists() and not attention_dir.is_dir():
        raise UsageError(f"--attention {attention_dir}: exists and is not a folder")
    if lines is None:
        _interactive(translator, beam)
        return
    keep = attention_dir is not None or explain
    results = translator.translate(lines, beam=1 if explain else beam, n_best=n_best,
                                   keep_attention=keep, top_k=3 if explain else 0,
                                   progress=len(lines) > 100)
    if explain:
        for line in explain_lines(translator, results[0]):
            sys.stderr.write(line + "\n")
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for i, tr in enumerate(results):
            if n_best == 1:
                out.write(tr.text + "\n")
                continue
            for rank, hyp in enumerate(tr.hypotheses, start=1):
                text = translator.tokenizer.decode_tgt([hyp.tokens])[0]
                out.write(f"{i + 1}\t{rank}\t{hyp.score:.4f}\t{text}\n")
        out.flush()
    finally:
        if output:
            out.close()
    if attention_dir is not None:
        write_attention(translator, results, attention_dir)


def write_attention(translator: Translator, results: list, folder: Path) -> None:
    """attention-N.json (pieces and words) and attention-N.png per sentence."""
    from nmt.evaluation.plots import attention_heatmap  # matplotlib only when plotting

    folder.mkdir(parents=True, exist_ok=True)
    for i, tr in enumerate(results, start=1):
        if not tr.src_pieces:
            continue
        record = attention_record(translator, tr)
        (folder / f"attention-{i}.json").write_text(json.dumps(record, ensure_ascii=False,
                                                               indent=1), encoding="utf-8")
        attention_heatmap(record["word_attention"], record["source_words"],
                          record["target_words"], folder / f"attention-{i}.png",
                          title=tr.text, axes=translator.language_names())
    log.info("attention written to %s/", folder)


def _interactive(translator: Translator, beam: int | None) -> None:
    source = translator.language_names()[0]
    sys.stderr.write(f"Type a sentence in {source} and press Enter (Ctrl-D to quit).\n")
    while True:
        try:
            line = input(f"{translator.languages[0] or 'source'}> ")
        except EOFError:
            sys.stderr.write("\n")
            return
        print(translator.translate([line], beam=beam)[0].text, flush=True)
