"""Writes the small synthetic English-Portuguese corpus used by tests and configs/tiny.yaml.

    python scripts/make_tiny_corpus.py tests/data/tiny.en-pt.tsv

Sentences come from a tiny grammar (subject, verb, object, optional time word), so the corpus
is our own, deterministic, and has real word-order and agreement to learn.
"""

import itertools
import random
import sys

SUBJECTS = [  # (English, Portuguese, plural)
    ("the cat", "o gato", False), ("the dog", "o cão", False), ("the girl", "a menina", False),
    ("the boy", "o menino", False), ("my mother", "a minha mãe", False),
    ("the teacher", "o professor", False), ("the cats", "os gatos", True),
    ("the children", "as crianças", True), ("my friends", "os meus amigos", True),
]
VERBS = [  # (English singular, English plural, Portuguese singular, Portuguese plural)
    ("sees", "see", "vê", "veem"), ("wants", "want", "quer", "querem"),
    ("has", "have", "tem", "têm"), ("finds", "find", "encontra", "encontram"),
    ("buys", "buy", "compra", "compram"), ("reads", "read", "lê", "leem"),
]
OBJECTS = [
    ("the ball", "a bola"), ("a book", "um livro"), ("the red car", "o carro vermelho"),
    ("the old house", "a casa velha"), ("a new table", "uma mesa nova"),
    ("the letter", "a carta"), ("some bread", "algum pão"),
]
TIMES = [("", ""), ("today", "hoje"), ("now", "agora"), ("every day", "todos os dias")]


def pairs():
    for (se, sp, plural), (ve1, ve2, vp1, vp2), (oe, op), (te, tp) in itertools.product(
            SUBJECTS, VERBS, OBJECTS, TIMES):
        en = f"{se} {ve2 if plural else ve1} {oe}" + (f" {te}" if te else "")
        pt = f"{sp} {vp2 if plural else vp1} {op}" + (f" {tp}" if tp else "")
        yield en[0].upper() + en[1:] + ".", pt[0].upper() + pt[1:] + "."


def main(path: str, n: int = 600) -> None:
    rows = list(pairs())
    random.Random(7).shuffle(rows)
    with open(path, "w", encoding="utf-8") as f:
        for en, pt in rows[:n]:
            f.write(f"{en}\t{pt}\n")


if __name__ == "__main__":
    main(sys.argv[1])
