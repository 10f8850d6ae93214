"""Errors a user can cause, each mapped by the CLI to one line and an exit code.

Exit codes: 2 for usage and configuration errors (fix the command or the YAML), 1 for runtime
errors (bad data, unreadable checkpoint, a failure while running).
"""

from __future__ import annotations


class NmtError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(NmtError):
    """A command-line option or argument is wrong."""

    exit_code = 2


class ConfigError(NmtError):
    """One or more problems in a config, each prefixed with its dotted key path."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(self.problems))


class DataError(NmtError):
    """A corpus, prepared-data cache or download is missing, malformed or unusable."""


class CheckpointError(NmtError):
    """A checkpoint or run directory is missing, unreadable or incompatible."""


class TrainingError(NmtError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


class Interrupted(NmtError):
    """Training was stopped by SIGINT/SIGTERM after saving; exit code 128 + signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
