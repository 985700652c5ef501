"""What the CLI tests share besides their fixtures: the result of a run, a file writer, and the
broken file whose LC900 finding any rule set reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BROKEN = "x = = 1  # backward\n"  # LC900 on line 1
CLEAN = "x = 1\n"
REPO = Path(__file__).resolve().parents[2]  # the checkout


@dataclass
class Result:
    code: int
    out: str
    err: str

    def findings(self) -> set[tuple[str, int, str]]:
        """(file, row, code) of each finding, from ``--format json`` output."""
        return {(r["filename"], r["location"]["row"], r["code"]) for r in json.loads(self.out)}


def write(path: str | Path, text: str | bytes = BROKEN) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
