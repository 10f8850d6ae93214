"""SentencePiece subword models: training on the train split, encoding and decoding.

Ids 0-3 are reserved in every model: <pad>=0, <unk>=1, <s>=2 (BOS), </s>=3 (EOS). A joint model
serves both languages; otherwise the source and the target language have one model each. Models
travel as bytes, so a checkpoint carries its tokenizer.

`encode_*` gives a sentence's one segmentation, which prepared data, validation and search use;
`samplers` draw other segmentations of it for subword regularisation (nmt.data.sampling).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from nmt.data.sampling import BpeDropout, UnigramSampling, sampler

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_model(sentences: Iterable[str], vocab_size: int, model_type: str,
                character_coverage: float, seed_sentences: int = 2_000_000) -> bytes:
    """Trains one SentencePiece model and returns its serialised bytes."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=out,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=False,  # deterministic: no sampling of the input
        hard_vocab_limit=False,  # tiny corpora get a smaller vocabulary instead of an error
        num_threads=2,
        minloglevel=2,
    )
    return out.getvalue()


class Tokenizer:
    """Source and target SentencePiece processors (the same one when the vocabulary is joint)."""

    def __init__(self, src_model: bytes, tgt_model: bytes) -> None:
        self.src_model, self.tgt_model = src_model, tgt_model
        self.src = spm.SentencePieceProcessor(model_proto=src_model)
        self.tgt = self.src if tgt_model == src_model else spm.SentencePieceProcessor(
            model_proto=tgt_model)

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, sentences: list[str]) -> list[list[int]]:
        return self.src.encode(sentences)

    def encode_tgt(self, sentences: list[str]) -> list[list[int]]:
        return self.tgt.encode(sentences)

    def samplers(self, spm_type: str, alpha: float, nbest: int
                 ) -> tuple[UnigramSampling | BpeDropout, UnigramSampling | BpeDropout]:
        """Source and target subword sampling (one, when the vocabulary is joint)."""
        src = sampler(self.src, spm_type, alpha, nbest)
        return src, src if self.tgt is self.src else sampler(self.tgt, spm_type, alpha, nbest)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def src_pieces(self, sentence: str) -> list[str]:
        return self.src.encode(sentence, out_type=str)

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]


def chunks(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
