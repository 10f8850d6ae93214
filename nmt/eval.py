"""`nmt eval`: score one or more checkpoints on a test set and print the result; several
checkpoints on one test set are compared by paired bootstrap resampling. Only the CLI imports
this module."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import typer

from nmt.errors import UsageError
from nmt.evaluation.evaluate import EvalResult, evaluate, read_test_set
from nmt.evaluation.metrics import METRICS
from nmt.evaluation.significance import DEFAULT_RESAMPLES, Comparison, paired_bootstrap
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


def run_eval(systems: list[tuple[Path | None, ...]], src: Path | None, ref: Path | None,
             tsv: Path | None, beam: int | None, names: tuple[str, ...], lengths: bool,
             output: Path | None, plot: Path | None, as_json: bool, device: str,
             precision: str | None = None, bootstrap: int = DEFAULT_RESAMPLES) -> None:
    """Scores each system, a checkpoint or an ensemble of checkpoints (a tuple of several)."""
    if output is not None and len(systems) > 1:
        raise UsageError("--output names one file: use it with one --checkpoint")
    results: list[EvalResult] = []
    test_sets: list[tuple[list[str], list[str]]] = []
    for first, *others in systems:
        translator = load_translator(first, device, ensemble=tuple(others),
                                      precision=precision)
        run_dir = translator.path.parent
        name = " + ".join([str(translator.path), *map(str, others)])
        if src is None and tsv is None:
            src_lang, tgt_lang = translator.languages
            sources, refs = read_test_set(run_dir / f"test.{src_lang}",
                                          run_dir / f"test.{tgt_lang}", None)
            test_name = "test"
        else:
            sources, refs = read_test_set(src, ref, tsv)
            test_name = (tsv or src).stem
        b = beam or translator.decode.beam
        kind = f".ensemble{len(others) + 1}" if others else ""
        hyp_path = output or run_dir / f"{test_name}.beam{b}{kind}.hyp.txt"
        results.append(evaluate(translator, sources, refs, b, names, hyp_path, name, lengths))
        test_sets.append((sources, refs))
    comparison = _compare(results, test_sets, names, bootstrap, translator.languages[1])
    if lengths:
        from nmt.evaluation.plots import bleu_by_length  # matplotlib only when plotting

        plot = plot or Path(results[0].hypotheses).with_suffix(".by-length.png")
        bleu_by_length({_label(r): [(k.label, k.bleu) for k in r.by_length] for r in results},
                       plot)
        log.info("BLEU-by-length plot written to %s", plot)
    if as_json:
        payload = [_as_json(r, i, results[0], comparison) for i, r in enumerate(results)]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=1))
        return
    for r in results:
        _print_result(r)
    if comparison:
        _print_comparison(results, comparison)


def _compare(results: list[EvalResult], test_sets: list[tuple[list[str], list[str]]],
             names: tuple[str, ...], resamples: int, target_lang: str = ""
             ) -> Comparison | None:
    """The paired bootstrap of the results against the first, when they share a test set."""
    if len(results) < 2 or not resamples:
        return None
    if any(t != test_sets[0] for t in test_sets[1:]):
        log.warning("no paired bootstrap: the checkpoints were scored on different test sets "
                    "(their runs' own test splits); give --src/--ref or --tsv to compare them")
        return None
    return paired_bootstrap([r.outputs for r in results], test_sets[0][1], names, resamples,
                            target_lang)


def _as_json(r: EvalResult, i: int, first: EvalResult, comparison: Comparison | None) -> dict:
    out = {k: v for k, v in asdict(r).items() if k != "outputs"}
    out["sentences_per_s"] = r.sentences_per_s
    if comparison:
        out["bootstrap"] = {
            "resamples": comparison.resamples, "against": first.checkpoint,
            "scores": [{**asdict(s), "low": s.low, "high": s.high,
                        "signature": comparison.signatures[s.name]}
                       for s in comparison.systems[i]]}
    return out


def _label(r: EvalResult) -> str:
    """run/file.pt, or run/a.pt + run/b.pt for an ensemble."""
    return " + ".join(f"{Path(c).parent.name}/{Path(c).name}" for c in r.checkpoint.split(" + "))


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


def _print_comparison(results: list[EvalResult], c: Comparison) -> None:
    typer.echo(f"paired bootstrap, {c.resamples} resamples, against {results[0].checkpoint} "
               f"(μ ± 95% interval; * p < 0.05):")
    rows = [[_label(r)] + [s.text(c.labels[s.name]) for s in row]
            for r, row in zip(results, c.systems)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    for row in rows:
        typer.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for name, signature in c.signatures.items():
        typer.echo(f"  {c.labels[name]}: [{signature}]")
