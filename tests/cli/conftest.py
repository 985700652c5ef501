"""Fixtures of the CLI tests: each runs in its own temporary directory (with its own cache),
and ``run`` calls the CLI's ``main`` in-process and captures its exit code and output."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_harness import Result

from loopcheck.cache import CACHE_DIR_ENV
from loopcheck.cli import main


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)  # the cache goes in tmp_path
    return tmp_path


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    def run(*argv: str) -> Result:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run
