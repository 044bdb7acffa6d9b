"""Exponential backoff with full jitter, for retries against the database."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**n))``."""

    base: float = 0.1
    cap: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        """Forget past failures."""
        self.attempt = 0
