"""The server's settings and limits, in one frozen dataclass checked once at startup."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nmt.errors import UsageError

_VISIBLE_ASCII = re.compile(r"[!-~]+")  # what a client can send in a header, as it was typed


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # address to listen on: loopback unless another is chosen
    port: int = 8000  # TCP port (0: any free port, logged at startup)
    api_key: str | None = None  # when set, every API request must carry it (401 without)
    max_batch: int = 64  # most sentences translated together in one batch
    max_wait_ms: float = 5.0  # how long a batch's first request waits for others to join it
    max_body_bytes: int = 1 << 20  # largest request body (413 above)
    max_sentences: int = 128  # sentences in one request (413 above)
    max_chars: int = 2000  # characters in one sentence (413 above)
    max_beam: int = 16  # widest beam a request may ask for (422 above)
    max_queue: int = 4096  # sentences waiting for the model at most (503 above: busy)
    grace_s: float = 10.0  # on Ctrl-C/SIGTERM, how long queued requests may still be answered
    timeout_s: float = 60.0  # a request's deadline from its headers: 408 for the body, 504 after

    def check(self) -> None:
        """Raises one UsageError naming every option out of its range."""
        problems = [f"{name}: expected {want}, got {value!r}" for name, value, ok, want in [
            ("--port", self.port, 0 <= self.port <= 65535, "0-65535"),
            ("--max-batch", self.max_batch, self.max_batch >= 1, "at least 1"),
            ("--max-wait-ms", self.max_wait_ms, 0 <= self.max_wait_ms <= 10_000, "0-10000"),
            ("--max-body-kb", self.max_body_bytes // 1024, self.max_body_bytes >= 1024,
             "at least 1"),
            ("--max-sentences", self.max_sentences, self.max_sentences >= 1, "at least 1"),
            ("--max-chars", self.max_chars, self.max_chars >= 1, "at least 1"),
            ("--max-beam", self.max_beam, self.max_beam >= 1, "at least 1"),
            ("--max-queue", self.max_queue, self.max_queue >= 1, "at least 1"),
            ("--grace", self.grace_s, 0 <= self.grace_s <= 3600, "0-3600 seconds"),
            ("--timeout", self.timeout_s, 0 < self.timeout_s <= 3600, "0-3600 seconds, not 0"),
        ] if not ok]
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api-key: expected a non-empty key (or leave NMT_API_KEY unset)")
        elif self.api_key is not None and not _VISIBLE_ASCII.fullmatch(self.api_key):
            problems.append("--api-key: expected visible ASCII characters only (letters, digits, "
                            "punctuation): an HTTP header cannot carry the others reliably, so "
                            "such a key would never match")
        if problems:
            raise UsageError("; ".join(problems))

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def limits(self) -> dict[str, float]:
        """The limits a client must respect, as /info reports them."""
        return {"max_body_bytes": self.max_body_bytes, "max_sentences": self.max_sentences,
                "max_chars": self.max_chars, "max_beam": self.max_beam,
                "max_batch": self.max_batch, "timeout_s": self.timeout_s}
