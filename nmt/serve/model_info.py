"""What /info says about the model, from what its translator read from the checkpoint: its
file's name, never where it lies on the server's disk."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nmt.config import Config
from nmt.inference.translator import Translator


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the run's name (config `name`)
    checkpoint: str  # the name of the file it was loaded from (never its path)
    step: int | None  # updates trained when it was written
    parameters: int  # trainable and frozen, all of them
    device: str
    config: Config
    src_vocab: int
    tgt_vocab: int
    languages: tuple[str, str]  # (source, target) codes

    def summary(self) -> dict:
        """The /info body, less the server's limits and counters."""
        m = self.config.model
        sizes = {k: v for k, v in asdict(m).items() if k != "attention"}
        return {"name": self.name, "checkpoint": self.checkpoint, "step": self.step,
                "parameters": self.parameters, "device": self.device,
                "attention": asdict(m.attention), "model": sizes,
                "vocabulary": {"source": self.src_vocab, "target": self.tgt_vocab},
                "languages": {"source": self.languages[0], "target": self.languages[1]},
                "decode": asdict(self.config.decode)}


def describe(translator: Translator) -> ModelInfo:
    """What the translator's checkpoint said (its name, step and model config); the
    translator's own decode settings win."""
    cfg = translator.config
    if cfg is None or translator.path is None:
        raise ValueError("describe() needs a translator loaded from a checkpoint")
    return ModelInfo(
        name=cfg.name, checkpoint=Path(translator.path).name, step=translator.step,
        parameters=sum(p.numel() for p in translator.model.parameters()),
        device=str(translator.device), config=replace(cfg, decode=translator.decode),
        src_vocab=translator.tokenizer.src_vocab_size,
        tgt_vocab=translator.tokenizer.tgt_vocab_size, languages=translator.languages)
