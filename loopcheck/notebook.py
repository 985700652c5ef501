"""Jupyter notebooks: their code cells as one Python program, and places mapped back to cells.

A notebook's cells run top to bottom in one namespace, so the linter reads them as one program:
the code cells joined in order, each IPython-only line (``%magic``, ``!shell``, ``obj?``, a
``%%cell`` magic) neutralised in place so that every other line keeps its number. Jupyter
compiles each cell on its own, and so does :func:`read_notebook`: a cell that does not compile
is left out of the program (blank lines in its place) and listed in
:attr:`Notebook.broken_cells`, so that one broken cell neither hides the others nor merges with
the next one.

Cells are numbered as Jupyter shows them and as ruff reports them: from 1, counting every cell
(markdown and raw cells too). A :class:`~loopcheck.diagnostic.Diagnostic` in a notebook carries
that number in ``cell`` and its line relative to the cell.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from loopcheck.diagnostic import Diagnostic
from loopcheck.noqa import split_lines

SUFFIX = ".ipynb"

# Cell magics whose body is Python run in the notebook's namespace; the body of any other cell
# magic (%%bash, %%writefile, %%html, ...) is not Python, or is not run here.
PYTHON_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})

# `obj?`, `obj??`, `?obj`, `%psearch a*?`: IPython's help syntax (never valid Python).
_HELP = re.compile(r"\s*(?:\?{1,2}[\w.*]+|[\w.*]+\?{1,2})\s*")
# `files = !ls`, `x = %time f()`: IPython assigns a magic's or a shell command's result.
_ASSIGNED_MAGIC = re.compile(r"(?P<target>\s*[\w.]+(?:\s*,\s*[\w.]+)*\s*=\s*)[!%].*")


def is_notebook(path: str) -> bool:
    return path.lower().endswith(SUFFIX)


class NotebookError(ValueError):
    """The file is not a notebook loopcheck can read; ``line``/``column`` locate it in the file."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Cell:
    """One code cell: its number, its lines as written, and the lines given to the linter."""

    number: int
    lines: tuple[str, ...]
    code: tuple[str, ...]  # the same number of lines, IPython syntax neutralised

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.code)


@dataclass(frozen=True)
class Notebook:
    """A notebook's code cells, and the program that joins those that compile."""

    cells: tuple[Cell, ...]
    broken_cells: tuple[Cell, ...]  # cells Python cannot compile: left out of the program
    program: str
    # program line (1-based; index 0 unused) → (cell number, line in the cell)
    _places: tuple[tuple[int, int], ...]

    def locate(self, diagnostic: Diagnostic) -> Diagnostic:
        """A diagnostic on the program, moved to its cell (the program's lines are the cells')."""
        cell, line = self._place(diagnostic.line)
        end_cell, end_line = self._place(diagnostic.end_line or diagnostic.line)
        if end_cell != cell:  # a span cannot leave its cell; close it where it starts
            end_line, end_column = line, diagnostic.column
        else:
            end_column = diagnostic.end_column
        return replace(diagnostic, cell=cell, line=line, end_line=end_line, end_column=end_column)

    def _place(self, line: int) -> tuple[int, int]:
        if 1 <= line < len(self._places):
            return self._places[line]
        return self._places[-1] if len(self._places) > 1 else (1, 1)


def read_notebook(raw: bytes) -> Notebook | None:
    """The notebook in ``raw`` (a ``.ipynb`` file's bytes); None for a notebook in a language
    other than Python (nothing to lint). Raises :class:`NotebookError` for anything else that
    is not a notebook of code cells."""
    document = _load(raw)
    if document is None:
        return _join(())
    if _language(document) not in (None, "python"):
        return None
    return _join(tuple(_code_cells(document)))


def cell_lines(raw: bytes) -> dict[int, tuple[str, ...]]:
    """The lines of each code cell as written, by cell number (for code frames); empty when
    ``raw`` is not a readable notebook."""
    try:
        document = _load(raw)
        return {cell.number: cell.lines for cell in _code_cells(document or {"cells": []})}
    except NotebookError:
        return {}


def _load(raw: bytes) -> dict | None:
    """The notebook's JSON document; None for an empty file."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise NotebookError(f"notebook is not valid UTF-8: {exc.reason}", line) from None
    if not text.strip():
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            f"notebook is not valid JSON: {exc.msg}", exc.lineno, exc.colno
        ) from None
    except RecursionError:
        raise NotebookError("notebook is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        if isinstance(document, dict) and "worksheets" in document:
            raise NotebookError(
                "notebook format 3 is not supported: save it again with Jupyter (format 4)"
            )
        raise NotebookError("not a Jupyter notebook: no list of cells")
    return document


def _language(document: dict) -> str | None:
    """The notebook's language, lowercased ("python" for python3 kernels), when it says one."""
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return None
    for key, field in (("language_info", "name"), ("kernelspec", "language")):
        section = metadata.get(key)
        if isinstance(section, dict) and isinstance(section.get(field), str):
            name = section[field].lower()
            return "python" if name.startswith("python") else name
    return None


def _code_cells(document: dict) -> Iterable[Cell]:
    for number, cell in enumerate(document["cells"], start=1):
        if not isinstance(cell, dict):
            raise NotebookError(f"cell {number} is not a JSON object")
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source")
        if isinstance(source, list) and all(isinstance(part, str) for part in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise NotebookError(f"cell {number}: its source is not text")
        lines = tuple(split_lines(source))
        if lines and lines[-1] == "":  # the newline ending the last line starts no line
            lines = lines[:-1]
        yield Cell(number, lines, neutralise(lines))


def _join(cells: tuple[Cell, ...]) -> Notebook:
    places: list[tuple[int, int]] = [(0, 0)]
    program: list[str] = []
    broken = []
    for cell in cells:
        if _compiles(cell.text):
            program.append(cell.text)
        else:
            broken.append(cell)
            program.append("\n" * len(cell.code))
        places += [(cell.number, line) for line in range(1, len(cell.code) + 1)]
    return Notebook(cells, tuple(broken), "".join(program), tuple(places))


def _compiles(text: str) -> bool:
    try:
        compile(text, "<cell>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


# -- IPython syntax ------------------------------------------------------------------------------


def neutralise(lines: Iterable[str]) -> tuple[str, ...]:
    """The cell's lines with IPython-only syntax replaced by Python that does nothing, line for
    line: a statement-position ``%magic``, ``!command`` or ``obj?`` becomes ``pass`` at the
    same indentation, ``x = !command`` becomes ``x = None``; a ``%%time``-like cell magic line
    becomes blank and any other cell magic blanks its whole cell. Lines inside brackets,
    strings or backslash continuations are Python's and are left alone."""
    lines = tuple(lines)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic = lines[first].lstrip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in PYTHON_CELL_MAGICS:
            return tuple("" for _ in lines)
        lines = (*lines[:first], "", *lines[first + 1 :])
    out = []
    scanner = _Scanner()
    in_magic = False  # a magic line ended with a backslash: its next line belongs to it
    for line in lines:
        if in_magic:
            out.append("")
            in_magic = line.rstrip().endswith("\\")
            continue
        replacement = _replacement(line) if scanner.at_statement_start else None
        if replacement is None:
            out.append(line)
            scanner.feed(line)
        else:
            out.append(replacement)
            in_magic = line.rstrip().endswith("\\")
    return tuple(out)


def _replacement(line: str) -> str | None:
    """The Python standing in for a statement-position IPython line, or None if it is Python."""
    stripped = line.lstrip()
    indent = line[: len(line) - len(stripped)]
    if stripped.startswith(("%", "!")) and not stripped.startswith("!="):
        return indent + "pass"
    if _HELP.fullmatch(line):
        return indent + "pass"
    assigned = _ASSIGNED_MAGIC.fullmatch(line)
    if assigned and not line[assigned.end("target") :].startswith(("!=", "%=")):
        return assigned["target"] + "None"
    return None


class _Scanner:
    """Just enough of Python's tokenizer to know whether a line starts a statement: open
    brackets, open strings and backslash continuations carry over to the next line."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote: str | None = None
        self.continued = False

    @property
    def at_statement_start(self) -> bool:
        return self.depth == 0 and self.quote is None and not self.continued

    def feed(self, line: str) -> None:
        i, n = 0, len(line)
        comment = False
        while i < n:
            if self.quote is not None:
                if line.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = None
                else:
                    i += 2 if line[i] == "\\" else 1
                continue
            char = line[i]
            if char == "#":
                comment = True
                break
            if char in "([{":
                self.depth += 1
            elif char in ")]}":
                self.depth = max(self.depth - 1, 0)
            elif char in "'\"":
                self.quote = char * 3 if line.startswith(char * 3, i) else char
                i += len(self.quote)
                continue
            i += 1
        backslash = line.endswith("\\") and not comment
        if self.quote is not None and len(self.quote) == 1 and not backslash:
            self.quote = None  # an unterminated one-line string: Python reports it, not us
        self.continued = self.quote is None and backslash
