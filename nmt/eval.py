"""`nmt eval`: score one or more checkpoints on a test set and print the result. Only the CLI
imports this module."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import typer

from nmt.errors import UsageError
from nmt.evaluation.evaluate import EvalResult, evaluate, read_test_set
from nmt.evaluation.metrics import METRICS
from nmt.inference.translator import load_translator

log = logging.getLogger(__name__)


def metric_names(metrics: str | None, chrf: bool, ter: bool) -> tuple[str, ...]:
    names = ["bleu"]
    if metrics:
        for m in metrics.split(","):
            m = m.strip().lower()
            if m not in METRICS:
                raise UsageError(f"--metrics: unknown metric {m!r} (valid: bleu, chrf, ter)")
            if m not in names:
                names.append(m)
    names += [m for m, on in (("chrf", chrf), ("ter", ter)) if on and m not in names]
    return tuple(names)


def run_eval(checkpoints: list[Path | None], src: Path | None, ref: Path | None,
             tsv: Path | None, beam: int | None, names: tuple[str, ...], lengths: bool,
             output: Path | None, plot: Path | None, as_json: bool, device: str,
             int8: bool | None = None) -> None:
    if output is not None and len(checkpoints) > 1:
        raise UsageError("--output names one file: use it with one --checkpoint")
    results: list[EvalResult] = []
    for ckpt in checkpoints:
        translator = load_translator(ckpt, device, int8=int8)
        run_dir = translator.path.parent
        if src is None and tsv is None:
            sources, refs = read_test_set(run_dir / "test.en", run_dir / "test.pt", None)
            test_name = "test"
        else:
            sources, refs = read_test_set(src, ref, tsv)
            test_name = (tsv or src).stem
        b = beam or translator.decode.beam
        hyp_path = output or run_dir / f"{test_name}.beam{b}.hyp.txt"
        results.append(evaluate(translator, sources, refs, b, names, hyp_path,
                                str(translator.path), lengths))
    if lengths:
        from nmt.evaluation.plots import bleu_by_length  # matplotlib only when plotting

        plot = plot or Path(results[0].hypotheses).with_suffix(".by-length.png")
        bleu_by_length({_label(r): [(k.label, k.bleu) for k in r.by_length] for r in results},
                       plot)
        log.info("BLEU-by-length plot written to %s", plot)
    if as_json:
        payload = [{**asdict(r), "sentences_per_s": r.sentences_per_s} for r in results]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=1))
        return
    for r in results:
        _print_result(r)


def _label(r: EvalResult) -> str:
    p = Path(r.checkpoint)
    return f"{p.parent.name}/{p.name}"


def _print_result(r: EvalResult) -> None:
    typer.echo(f"checkpoint: {r.checkpoint}  beam {r.beam}  {r.sentences} sentences  "
               f"{r.sentences_per_s:.1f} sent/s")
    for s in r.scores:
        typer.echo(f"{s.text}  [{s.signature}]")
    typer.echo(f"hypotheses: {r.hypotheses}")
    if r.by_length:
        typer.echo(f"{'source words':>12}  {'sentences':>9}  {'BLEU':>6}")
        for k in r.by_length:
            typer.echo(f"{k.label:>12}  {k.sentences:>9}  {k.bleu:>6.2f}")
