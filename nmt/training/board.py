"""TensorBoard event files of a training run (`train.tensorboard`), written with torch's own
`torch.utils.tensorboard.SummaryWriter` into `<run>/tensorboard/`, beside metrics.csv:

    train/loss, train/lr, train/tgt_tokens_per_s        every train.log_every updates
    valid/loss, valid/bleu, valid/chrf, train/lr,       every validation
    train/tgt_tokens_per_s (the run's average so far)

`tensorboard` is an optional dependency (`pip install 'nmt[tensorboard]'`). A resumed run hides
what the interrupted one wrote after the step it resumes from (SummaryWriter's `purge_step`),
as metrics.csv drops those rows.
"""

from __future__ import annotations

from pathlib import Path

from nmt.errors import ConfigError

FOLDER = "tensorboard"  # in the run directory


def require() -> None:
    """Raises a one-line ConfigError when `train.tensorboard` cannot be honoured."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ConfigError([f"train.tensorboard: needs the tensorboard package ({err}); install "
                           f"it with pip install 'nmt[tensorboard]', or set it to false"]) from None


class Board:
    """Scalars by step into TensorBoard event files."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(run_dir / FOLDER), purge_step=purge)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
