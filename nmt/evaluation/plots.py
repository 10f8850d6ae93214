"""Figures: attention heatmaps, BLEU by source length, BLEU against wall minutes (PNG, via
matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def attention_heatmap(matrix: list[list[float]], source: list[str], target: list[str],
                      path: Path, title: str = "",
                      axes: tuple[str, str] = ("source", "translation")) -> None:
    """Target tokens down, source tokens across (`axes`: their labels, e.g. the languages);
    darker is more attention."""
    width = max(4.0, 0.45 * len(source) + 2)
    height = max(3.0, 0.4 * len(target) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(matrix, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(target)), target, fontsize=9)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bleu_by_length(series: dict[str, list[tuple[str, float]]], path: Path,
                   title: str = "BLEU by source length") -> None:
    """One line per model: (bucket label, BLEU) points."""
    fig, ax = plt.subplots(figsize=(6 + (2.5 if len(series) > 1 else 0), 4))
    for name, points in series.items():
        labels = [b for b, _ in points]
        ax.plot(range(len(points)), [s for _, s in points], marker="o", label=name)
        ax.set_xticks(range(len(points)), labels)
    ax.set_xlabel("source sentence length (words)")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bleu_over_time(series: dict[str, list[tuple[float, float]]], path: Path,
                   title: str = "Validation BLEU against wall minutes") -> None:
    """One line per system: (minutes, BLEU) points."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        ax.plot([m for m, _ in points], [b for _, b in points], marker="o", markersize=3,
                label=name)
    ax.set_xlabel("wall-clock minutes")
    ax.set_ylabel("BLEU")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_grid(panels: list[tuple[str, list[list[float]], list[str], list[str]]],
                   path: Path, columns: int = 4) -> None:
    """Several heatmaps side by side: (title, matrix, source tokens, target tokens) each."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, matrix, source, target) in zip(axes.flat, panels):
        ax.imshow(matrix, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(source)), _short(source), rotation=90, fontsize=6)
        ax.set_yticks(range(len(target)), _short(target), fontsize=6)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _short(labels: list[str], width: int = 12) -> list[str]:
    return [x if len(x) <= width else x[:width - 1] + "\u2026" for x in labels]
