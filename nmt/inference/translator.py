"""Translation of raw sentences with a trained model: normalise and encode exactly as the
training data was, batch by length, search, restore the input order, detokenise."""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nmt import checkpoint
from nmt import precision as numerics
from nmt.config import Config, DecodeConfig, from_dict
from nmt.data.batching import pad_sources
from nmt.data.corpus import normalize
from nmt.data.tokenizer import EOS, Tokenizer
from nmt.device import pick_device
from nmt.errors import CheckpointError, UsageError
from nmt.fast import int8, kernels
from nmt.inference.ensemble import Ensemble
from nmt.inference.search import Hypothesis, beam_search, check_beam, greedy
from nmt.languages import canonical
from nmt.languages import name as language_name
from nmt.model.seq2seq import Seq2Seq, build_model

log = logging.getLogger(__name__)


@dataclass
class Translation:
    source: str  # the input sentence, normalised
    text: str  # best translation, detokenised
    score: float
    hypotheses: list[Hypothesis]  # n-best, best first
    src_pieces: list[str]


class Translator:
    """Wraps a model and its tokenizer; `from_checkpoint` needs nothing but the checkpoint.

    Its searches run in `decode.precision` (`search_precision`); in int8 they quantize the
    model's weights once, at first use, and keep them: the weights must not change while a
    translator is in use (validation makes a new one each time)."""

    def __init__(self, model: Seq2Seq | Ensemble, tokenizer: Tokenizer, decode: DecodeConfig,
                 max_src_pieces: int, device: torch.device = torch.device("cpu"),
                 path: Path | None = None, config: Config | None = None,
                 step: int | None = None) -> None:
        self.model, self.tokenizer, self.decode = model, tokenizer, decode
        self.max_src_pieces = max_src_pieces
        self.device = device
        self.path = path  # the checkpoint it was loaded from, if any
        self.config, self.step = config, step  # that checkpoint's config and update count
        self._int8: Seq2Seq | Ensemble | None = None  # made at the first int8 search

    @property
    def languages(self) -> tuple[str, str]:
        """(source, target) language codes as files name them (`por` is `pt`), from the
        checkpoint's config ("", "" without one)."""
        if self.config is None:
            return "", ""
        return canonical(self.config.data.src_lang), canonical(self.config.data.tgt_lang)

    def language_names(self) -> tuple[str, str]:
        """(source, target) languages' English names ("source", "target" without a config)."""
        if self.config is None:
            return "source", "target"
        return tuple(language_name(code) for code in self.languages)  # type: ignore[return-value]

    def precision(self) -> str:
        """What the searches run in: 'fp32', 'bf16' or 'int8' (`decode.precision` here)."""
        return search_precision(self.decode.precision, self.device.type)

    def search_model(self) -> Seq2Seq | Ensemble:
        """The model the searches run: in int8, a copy with 8-bit weights (`nmt.fast.int8`),
        made once."""
        if self.precision() != "int8":
            return self.model
        if self._int8 is None:
            self._int8 = int8.quantized(self.model)
        return self._int8

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device = torch.device("cpu")
                        ) -> Translator:
        data = checkpoint.load(path)
        try:
            cfg = from_dict(data["config"], f"{path} (config)")
            tok = Tokenizer(data["tokenizer"]["src"], data["tokenizer"]["tgt"])
            model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                kernels.FUSED)
            model.load_state_dict(data["model"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: incompatible checkpoint ({first})") from None
        model.to(device).eval()
        step = data.get("step")
        return cls(model, tok, cfg.decode, 4 * cfg.data.max_pieces, device, path, cfg,
                   step if isinstance(step, int) else None)

    def translate(self, sentences: list[str], beam: int | None = None, n_best: int = 1,
                  keep_attention: bool = False, top_k: int = 0, progress: bool = False,
                  length_penalty: float | None = None) -> list[Translation]:
        """Translates in batches of similar length; output order = input order. `beam` and
        `length_penalty` default to `decode`'s."""
        self.model.eval()
        beam = beam or self.decode.beam
        check_beam(beam, self.tokenizer.tgt_vocab_size)
        sources = [normalize(s) for s in sentences]
        ids = self.tokenizer.encode_src(sources)
        for i, x in enumerate(ids):
            if len(x) > self.max_src_pieces:
                log.warning("sentence %d has %d pieces; only the first %d are translated",
                            i + 1, len(x), self.max_src_pieces)
                ids[i] = x[:self.max_src_pieces]
        results: list[Translation | None] = [None] * len(sources)
        for i, s in enumerate(sources):
            if not ids[i]:
                results[i] = Translation(s, "", 0.0, [Hypothesis([], 0.0)], [])
        todo = [i for i in np.argsort([-len(x) for x in ids], kind="stable") if ids[i]]
        size = self.decode.batch_size
        dtype = torch.bfloat16 if self.precision() == "bf16" else None
        with torch.inference_mode(), numerics.autocast(dtype, self.device):
            for start in tqdm(range(0, len(todo), size), desc="translating", unit=" batch",
                              disable=None if progress else True, leave=False):
                chunk = todo[start:start + size]
                hyps = self._search([ids[i] for i in chunk], beam, n_best, keep_attention, top_k,
                                    length_penalty)
                for i, nbest in zip(chunk, hyps):
                    for h in nbest:
                        if h.attention is not None:
                            h.attention = h.attention[:, :len(ids[i])]  # drop batch padding
                    text = self.tokenizer.decode_tgt([nbest[0].tokens])[0]
                    pieces = self.tokenizer.src.id_to_piece(ids[i]) if keep_attention else []
                    results[i] = Translation(sources[i], text, nbest[0].score, nbest, pieces)
        return results  # type: ignore[return-value]

    def _search(self, sources: list[list[int]], beam: int, n_best: int, keep_attention: bool,
                top_k: int, length_penalty: float | None) -> list[list[Hypothesis]]:
        src, src_len = pad_sources([np.asarray(s) for s in sources])
        src = src.to(self.device)
        d = self.decode
        max_len = (src_len.float() * d.max_len_ratio).long() + d.max_len_add  # (B,)
        if beam == 1:
            hyps = greedy(self.search_model(), src, src_len, max_len, keep_attention, top_k)
            return [[h] for h in hyps]
        alpha = d.length_penalty if length_penalty is None else length_penalty
        return beam_search(self.search_model(), src, src_len, max_len, beam, n_best, alpha,
                           keep_attention, d.early_stop)

    def target_pieces(self, hyp: Hypothesis) -> list[str]:
        return self.tokenizer.tgt_pieces(hyp.tokens) + [self.tokenizer.tgt.id_to_piece(EOS)]


@functools.cache
def search_precision(setting: str, device_type: str) -> str:
    """`decode.precision` on a device kind -> 'fp32', 'bf16' or 'int8', logged once. auto is,
    on a CPU, int8 where the fast layer's 8-bit products work (the same BLEU as fp32 to 0.01 on
    the en-pt test split, docs/performance.md), else bf16 where the CPU computes it natively,
    else fp32; on CUDA, fp32."""
    if device_type != "cpu":
        if setting == "int8":
            log.warning("decode.precision: int8 runs on a CPU; searching in fp32 on %s",
                        device_type)
        return "bf16" if setting == "bf16" else "fp32"
    if setting in ("auto", "int8") and int8.available():
        log.info("decode.precision: int8%s", " (auto)" if setting == "auto" else "")
        return "int8"
    if setting == "int8":
        log.warning("decode.precision: int8 products are not available here (NMT_FAST or "
                    "torch's fbgemm); searching in fp32")
        return "fp32"
    dtype = numerics.cpu_dtype("auto" if setting == "auto" else setting, "decode.precision")
    return "fp32" if dtype is None else "bf16"


def load_translator(path: Path | None, device: str = "cpu", ensemble: tuple[Path, ...] = (),
                    **decode) -> Translator:
    """The translator of a checkpoint file or run directory (default: the newest run's best),
    searching as an ensemble with the models of `ensemble` (checkpoints or run directories with
    the same tokenizer); decoding settings are the first checkpoint's, with `decode` changes."""
    resolved = checkpoint.resolve(path if path is not None else checkpoint.latest_run())
    log.info("using checkpoint %s", resolved)
    translator = Translator.from_checkpoint(resolved, pick_device(device))
    if ensemble:
        models = [translator.model]
        for other in ensemble:
            member = Translator.from_checkpoint(checkpoint.resolve(other), pick_device(device))
            if (member.tokenizer.src_model, member.tokenizer.tgt_model) != (
                    translator.tokenizer.src_model, translator.tokenizer.tgt_model):
                raise UsageError(f"--ensemble {other}: its tokenizer differs from {resolved}'s; "
                                 f"an ensemble needs models with one tokenizer")
            log.info("in the ensemble: %s", member.path)
            models.append(member.model)
        translator.model = Ensemble(models)
    changes = {k: v for k, v in decode.items() if v is not None}
    if changes:  # checked as the config's own decode section is
        translator.decode = from_dict({"decode": asdict(replace(translator.decode, **changes))},
                                      "command line").decode
    return translator
