"""Prints the config reference (every key, its default and meaning) as Markdown tables, from the
dataclasses in nmt/config.py and the comment beside each field.

    python scripts/config_reference.py > /tmp/reference.md
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

from nmt import config as c

# One table per section; a nested section's keys (data.corpora[], model.attention) follow its
# parent's in the same table.
SECTIONS = [("(top level)", [(c.Config, "")]),
            ("data", [(c.DataConfig, "data."), (c.CorpusConfig, "data.corpora[].")]),
            ("model", [(c.ModelConfig, "model."), (c.AttentionConfig, "model.attention.")]),
            ("train", [(c.TrainConfig, "train.")]), ("decode", [(c.DecodeConfig, "decode.")])]


def comments(cls) -> dict[str, str]:
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): .*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{json.dumps(f.default)}`"
    return "(required)"


def rows(cls, prefix: str) -> list[str]:
    notes = comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or f.name in ("data", "model", "train", "decode",
                                                         "attention"):
            continue
        note = notes.get(f.name, "")
        hint = typing.get_type_hints(cls)[f.name]
        if typing.get_origin(hint) is typing.Literal:
            note += " (one of: " + ", ".join(typing.get_args(hint)) + ")"
        out.append(f"| `{prefix}{f.name}` | {default(f)} | {note} |")
    return out


def main() -> None:
    for title, parts in SECTIONS:
        print(f"\n**{title}**\n\n| key | default | meaning |\n| --- | --- | --- |")
        for cls, prefix in parts:
            print("\n".join(rows(cls, prefix)))


if __name__ == "__main__":
    main()
