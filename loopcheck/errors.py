"""Warning and error types the runtime watch raises; importable without torch."""

from __future__ import annotations

from typing import Any


class LoopcheckWarning(UserWarning):
    """A training-loop bug found at run time (``mode="warn"``)."""


class LoopcheckError(AssertionError):
    """A training-loop bug found at run time (``mode="raise"``); ``.finding`` says which."""

    def __init__(self, message: str, finding: Any = None) -> None:
        super().__init__(message)
        self.finding = finding
