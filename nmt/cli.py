"""The `nmt` command line: parses options, calls one library function per command, and turns
every `NmtError` into one line on stderr with its exit code (2: usage/config, 1: runtime)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from nmt import __version__
from nmt.errors import NmtError, UsageError

# The parser's own error (an unknown option, a value out of its range), whatever click it uses.
_ParserError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """A wrong option or argument is one line on stderr and exit 2, like every other error."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _ParserError as err:
            if err.format_message():  # (none: `nmt` alone, which has shown the help)
                typer.echo(f"error: {err.format_message()} (see --help)", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Train, run and score attention-based neural machine translation models.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Download corpora and prepare data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"verbose": False}
log = logging.getLogger("nmt")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key, e.g. --set train.lr=0.0005 (repeatable)."),
]


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("nmt")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def handle_errors(fn):
    """Maps NmtError and OSError to a one-line message and exit code; tracebacks only with
    --verbose."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NmtError as err:
            if _state["verbose"]:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as err:  # full disk, unwritable folder, ... : a runtime error
            if _state["verbose"]:
                raise
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None
        except (MemoryError, RuntimeError) as err:  # torch's allocators raise RuntimeError
            from nmt.training.memory import out_of_memory

            if _state["verbose"] or not out_of_memory(err):
                raise
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            typer.echo(f"error: out of memory ({detail or type(err).__name__}); use smaller "
                       f"batches (train.batch_tokens, decode.batch_size) or a smaller model",
                       err=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Debug logs and tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["verbose"] = verbose
    _setup_logging(verbose)


@data_app.command("download")
@handle_errors
def data_download(
    name: Annotated[str, typer.Argument(help="Corpus name (see --list).")] = "",
    dest: Annotated[Path, typer.Option("--dest", help="Folder to save into.")] = Path("data"),
    source: Annotated[Optional[str], typer.Option(
        "--from", help="Local file or URL (mirror) to fetch instead of the official URL.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the known corpora.")] = False,
    pair: Annotated[Optional[str], typer.Option(
        "--pair", help="tatoeba: a language and English as ISO 639-3 codes, e.g. deu-eng "
                       "(default: por-eng).")] = None,
    langs: Annotated[Optional[str], typer.Option(
        "--langs", help="tatoeba: the same as two codes, e.g. de,en.")] = None,
) -> None:
    """Download a named public corpus into data/ (resumable, size/checksum checked)."""
    from nmt.data.download import SOURCES, download, language_pair
    from nmt.errors import UsageError

    if list_ or not name:
        for s in SOURCES.values():
            typer.echo(f"{s.name}\t{s.description} ({s.licence})")
        if not list_:
            raise UsageError("give a corpus NAME to download (listed above)")
        return
    path = download(name, dest, source, langs=language_pair(pair, langs))
    typer.echo(str(path))


@data_app.command("prepare")
@handle_errors
def data_prepare(config: ConfigOpt, set_: SetOpt = None) -> None:
    """Clean, split and SentencePiece-encode the corpora of a config; print a summary."""
    from nmt.config import load_config
    from nmt.data.prepare import prepare
    from nmt.data.report import summary_table

    cfg = load_config(config, set_ or [])
    given = None
    if cfg.train.init_from:  # a fine-tune's corpora are encoded with its parent's models
        from nmt.training import finetune

        given = finetune.given_tokenizer(cfg, finetune.load_parent(cfg), None)
    prepared = prepare(cfg.data, tokenizer=given)
    typer.echo(summary_table(prepared, cfg.train.batch_tokens, cfg.train.seed,
                             [c.weight for c in cfg.data.corpora],
                             [c.path for c in cfg.data.corpora]))


@app.command("train")
@handle_errors
def train_cmd(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML config file (not needed with --resume).")] = None,
    set_: SetOpt = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this directory exactly where it stopped.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing run directory of the same name.")] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent of run directories.")]
    = Path("runs"),
    device: Annotated[Optional[str], typer.Option(
        "--device", help="cpu, cuda or auto (default: train.device).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="CPU threads per process (default: train.threads).")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="auto, fp32, bf16 or fp16 (CUDA) (default: train.precision; auto: "
                            "bf16 where the CPU or GPU computes it natively).")] = None,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="Processes on this machine (DDP via torchrun): one per GPU, "
                               "or CPU processes.")] = 1,
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Fine-tune: start from this run's best.pt (or this checkpoint) and "
                            "its tokenizer; sets train.init_from.")] = None,
) -> None:
    """Train a model; writes runs/<name>/ (config, tokenizer, checkpoints, metrics.csv)."""
    from nmt.config import load_config
    from nmt.errors import UsageError
    from nmt.train import resume_config, train

    overrides = list(set_ or [])
    if device is not None:
        overrides.append(f"train.device={device}")
    if threads is not None:
        overrides.append(f"train.threads={threads}")
    if precision is not None:
        overrides.append(f"train.precision={precision}")
    if init_from is not None:  # quoted: a path is a string, whatever YAML would make of it
        overrides.append(f"train.init_from={json.dumps(str(init_from))}")
    if resume is not None:
        if config is not None or overwrite or init_from is not None:
            raise UsageError("--resume takes the run's own config: drop "
                             "--config/--overwrite/--init-from")
        if not (resume / "last.pt").is_file():
            raise UsageError(f"--resume {resume}: no last.pt there to continue from")
        cfg = resume_config(resume, overrides)
    elif config is None:
        raise UsageError("give --config CONFIG (or --resume RUN_DIR)")
    else:
        cfg = load_config(config, overrides)
    if nproc > 1:  # the config is checked once, here; each process reads it again
        from nmt.training.distributed import launch

        raise typer.Exit(launch(nproc, _without_option(sys.argv[1:], "--nproc")))
    run_dir = train(cfg, runs_dir, resume, overwrite)
    typer.echo(str(run_dir))
    from nmt.training import distributed

    distributed.leave(distributed.from_env())


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Checkpoint file or run directory (default: newest run's best.pt).")]
BeamOpt = Annotated[Optional[int], typer.Option(
    "--beam", "-b", min=1, help="Beam size; 1 is greedy (default: decode.beam).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="What the search computes in: auto, fp32, bf16 or int8 (CPU: 8-bit "
    "weights in the decoder) (default: decode.precision, auto: the fastest here).")]
Int8Opt = Annotated[bool, typer.Option("--int8", help="Same as --precision int8.")]


def _search_precision(precision: Optional[str], int8: bool) -> Optional[str]:
    """--precision, with --int8 as its alias."""
    if int8 and precision not in (None, "int8"):
        raise UsageError(f"--int8 is --precision int8: drop one of --int8, --precision "
                         f"{precision}")
    return "int8" if int8 else precision


EnsembleOpt = Annotated[Optional[list[str]], typer.Option(
    "--ensemble", help="Comma-separated checkpoints or run directories with one tokenizer, "
    "searched as one model (the mean of their log-probabilities at each step).")]


def _ensemble(value: str) -> tuple[Path, ...]:
    paths = tuple(Path(p.strip()) for p in value.split(",") if p.strip())
    if not paths:
        raise UsageError(f"--ensemble {value!r}: expected checkpoints separated by commas")
    return paths


def _read_input(sentences: list[str], input_file: Optional[Path]) -> Optional[list[str]]:
    """The sentences to translate; None means an interactive prompt."""
    from nmt.data.corpus import read_lines

    if sentences and input_file:
        raise UsageError("give sentences or --input, not both")
    if sentences:
        return sentences
    if input_file is not None and str(input_file) != "-":
        return read_lines(input_file)
    if input_file is None and sys.stdin.isatty():
        return None
    return [line.rstrip("\r\n") for line in sys.stdin]


@app.command("translate")
@handle_errors
def translate_cmd(
    sentences: Annotated[Optional[list[str]], typer.Argument(
        help="Sentences to translate (default: --input, stdin, or a prompt).")] = None,
    input_file: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="File with one sentence a line ('-' for stdin).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write translations here instead of stdout.")] = None,
    checkpoint: CheckpointOpt = None,
    beam: BeamOpt = None,
    n_best: Annotated[int, typer.Option("--n-best", min=1, help="Hypotheses per sentence "
                                        "(printed as INDEX<TAB>RANK<TAB>SCORE<TAB>TEXT).")] = 1,
    length_penalty: Annotated[Optional[float], typer.Option(
        "--length-penalty", min=0.0, help="Beam length-penalty alpha.")] = None,
    max_len_ratio: Annotated[Optional[float], typer.Option(
        "--max-len-ratio", min=0.01, help="Output at most this x source pieces (+ 10).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Sentences per batch.")] = None,
    attention: Annotated[Optional[Path], typer.Option(
        "--attention", help="Folder for attention JSON and PNG heatmaps, one per sentence.")]
    = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Show each greedy step: token, alternatives, attended words.")] = False,
    ensemble: EnsembleOpt = None,
    precision: PrecisionOpt = None,
    int8: Int8Opt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Translate sentences from the model's source language into its target language."""
    from nmt.inference.translator import load_translator
    from nmt.translate import run_translate

    lines = _read_input(sentences or [], input_file)
    if explain and (lines is None or len(lines) != 1):
        raise UsageError("--explain takes exactly one sentence")
    if ensemble and (checkpoint is not None or len(ensemble) > 1):
        raise UsageError("--ensemble names the whole system: give it once, without --checkpoint")
    first, *others = _ensemble(ensemble[0]) if ensemble else (checkpoint,)
    translator = load_translator(first, device, ensemble=tuple(others),
                                 length_penalty=length_penalty, max_len_ratio=max_len_ratio,
                                 batch_size=batch_size,
                                 precision=_search_precision(precision, int8))
    if n_best > 1 and (beam or translator.decode.beam) < n_best:
        raise UsageError(f"--n-best {n_best} needs --beam of at least {n_best}")
    run_translate(translator, lines, output, beam, n_best, attention, explain)


@app.command("eval")
@handle_errors
def eval_cmd(
    checkpoint: Annotated[Optional[list[Path]], typer.Option(
        "--checkpoint", help="Checkpoint or run directory; repeat to compare them, the first "
        "being the baseline (default: newest run's best.pt).")] = None,
    src: Annotated[Optional[Path], typer.Option(
        "--src", help="Test sentences in the model's source language.")] = None,
    ref: Annotated[Optional[Path], typer.Option(
        "--ref", help="Their references in its target language.")] = None,
    tsv: Annotated[Optional[Path], typer.Option(
        "--tsv", help="Test set as source<TAB>reference lines.")] = None,
    beam: BeamOpt = None,
    bleu: Annotated[bool, typer.Option("--bleu", help="BLEU (always reported).")] = True,
    chrf: Annotated[bool, typer.Option("--chrf", help="Also chrF.")] = False,
    ter: Annotated[bool, typer.Option("--ter", help="Also TER.")] = False,
    metrics: Annotated[Optional[str], typer.Option(
        "--metrics", help="Comma-separated: bleu,chrf,ter.")] = None,
    by_length: Annotated[bool, typer.Option(
        "--by-length", help="BLEU per source-length bucket, as a table and a PNG plot.")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Hypotheses file (default: in the run directory).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="PNG for --by-length (default: beside the hypotheses).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", min=0, help="Paired bootstrap resamples when comparing checkpoints on "
                                   "one test set (0: no test).")] = 1000,
    ensemble: Annotated[Optional[list[str]], typer.Option(
        "--ensemble", help="Comma-separated checkpoints searched as one model; a system "
        "scored after the --checkpoint ones (repeat for more).")] = None,
    precision: PrecisionOpt = None,
    int8: Int8Opt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Translate a test set and score it with sacrebleu (the run's own test split by default)."""
    from nmt.eval import metric_names, run_eval

    if (src is None) != (ref is None):
        raise UsageError("--src and --ref go together")
    if tsv is not None and src is not None:
        raise UsageError("give --tsv or --src/--ref, not both")
    names = metric_names(metrics, chrf, ter)
    systems = [(c,) for c in checkpoint or ([] if ensemble else [None])]
    systems += [_ensemble(e) for e in ensemble or []]
    run_eval(systems, src, ref, tsv, beam, names, by_length, output, plot,
             as_json, device, _search_precision(precision, int8), bootstrap)


@app.command("average")
@handle_errors
def average_cmd(
    paths: Annotated[list[Path], typer.Argument(
        help="A run directory (with --last or --best), or checkpoint files.")],
    last: Annotated[Optional[int], typer.Option(
        "--last", min=1, help="Average the run's K newest step-N.pt checkpoints.")] = None,
    best: Annotated[Optional[int], typer.Option(
        "--best", min=1, help="Average the run's K best-scoring step-N.pt checkpoints.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Checkpoint to write (default: averaged.pt in the run "
                               "directory, or beside the first file).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Average checkpoints of another model config, tokenizer or seed "
                        "anyway (their parameters' shapes must still match).")] = False,
) -> None:
    """Average checkpoints of one model into one checkpoint (the mean of their weights)."""
    from nmt.training.averaging import average_command

    typer.echo(str(average_command(paths, last or 0, best or 0, output, force)))


@app.command("serve")
@handle_errors
def serve_cmd(
    checkpoint: CheckpointOpt = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; anything but loopback is reachable from other "
                       "machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535, help="TCP port (0: any free port, logged).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="NMT_API_KEY", show_envvar=True,
        help="Every API request must carry this key (X-API-Key or Authorization: Bearer).")]
    = None,
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, help="Most sentences translated together in one batch.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0, max=10000,
        help="How long a batch's first request waits for others to join it.")] = 5.0,
    max_body_kb: Annotated[int, typer.Option(
        "--max-body-kb", min=1, help="Largest request body, in KiB (413 above).")] = 1024,
    max_sentences: Annotated[int, typer.Option(
        "--max-sentences", min=1, help="Sentences in one request (413 above).")] = 128,
    max_chars: Annotated[int, typer.Option(
        "--max-chars", min=1, help="Characters in one sentence (413 above).")] = 2000,
    max_beam: Annotated[int, typer.Option(
        "--max-beam", min=1, help="Widest beam a request may ask for (422 above).")] = 16,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=1, help="Sentences waiting for the model at most (503 above).")]
    = 4096,
    grace: Annotated[float, typer.Option(
        "--grace", min=0, max=3600,
        help="On Ctrl-C/SIGTERM, seconds for which queued requests are still answered.")] = 10.0,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.001, max=3600,
        help="Seconds a request may take from its headers: 408 if its body is not in by "
             "then, 504 if its answer is not ready.")] = 60.0,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads for the model (default: torch's).")] = None,
    precision: PrecisionOpt = None,
    int8: Int8Opt = False,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve a model over HTTP: a page at / and a JSON API (/translate, /health, /info)."""
    from nmt.serve.options import ServeOptions
    from nmt.serve.server import run_server

    options = ServeOptions(host=host, port=port, api_key=api_key, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, max_body_bytes=max_body_kb * 1024,
                           max_sentences=max_sentences, max_chars=max_chars, max_beam=max_beam,
                           max_queue=max_queue, grace_s=grace, timeout_s=timeout)
    run_server(checkpoint, options, device, _search_precision(precision, int8), threads,
               _state["verbose"])


def main() -> None:
    app(prog_name="nmt")
