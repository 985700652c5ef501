"""``# noqa`` comments: findings the user silenced on their own line, in ruff's syntax.

``# noqa`` silences every finding on its line, ``# noqa: LC102`` or ``# noqa: LC102, LC108``
only those codes (commas or spaces between codes; ``noqa`` and codes in any case). A finding
counts as on the line where it starts, so for a statement over several lines the comment goes
on its first line. A ``# noqa:`` followed by no valid code is read as a blanket ``# noqa``.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass

from loopcheck.diagnostic import Diagnostic

_CODE = r"[A-Za-z]+[0-9]+(?![A-Za-z0-9_])"
_NOQA = re.compile(r"#\s*noqa(?![A-Za-z0-9_])(?P<colon>\s*:)?(?P<rest>.*)", re.IGNORECASE)
_CODE_LIST = re.compile(rf"\s*{_CODE}(?:(?:\s*,\s*|\s+){_CODE})*")


@dataclass(frozen=True)
class Noqa:
    """One ``# noqa`` comment; no codes means every code."""

    codes: frozenset[str] = frozenset()

    def silences(self, code: str) -> bool:
        return not self.codes or code.upper() in self.codes


def parse_noqa(comment: str) -> Noqa | None:
    """The directive in a comment (``# noqa: LC102``), or None when it has none."""
    match = _NOQA.search(comment)
    if match is None:
        return None
    if not match["colon"]:
        return Noqa()
    codes = _CODE_LIST.match(match["rest"])
    if codes is None:
        return Noqa()
    return Noqa(frozenset(code.upper() for code in re.findall(_CODE, codes.group())))


def comments_by_line(text: str) -> dict[int, str]:
    """Each line's comment (1-based line numbers).

    Source that does not tokenize (a file with a syntax error) falls back to the text after
    the first ``#`` of each line, which may be inside a string: good enough for broken files.
    """
    try:
        return {
            token.start[0]: token.string
            for token in tokenize.generate_tokens(io.StringIO(text).readline)
            if token.type == tokenize.COMMENT
        }
    except (tokenize.TokenError, SyntaxError):
        return {
            number: line[line.index("#") :]
            for number, line in enumerate(split_lines(text), start=1)
            if "#" in line
        }


def split_lines(text: str) -> list[str]:
    """Lines as Python numbers them: ``\\n``, ``\\r\\n`` and ``\\r`` end one (form feeds do not)."""
    return re.split(r"\r\n|\r|\n", text)


def noqa_by_line(text: str) -> dict[int, Noqa]:
    directives = {}
    for line, comment in comments_by_line(text).items():
        directive = parse_noqa(comment)
        if directive is not None:
            directives[line] = directive
    return directives


def remove_silenced(diagnostics: Iterable[Diagnostic], text: str) -> list[Diagnostic]:
    """The diagnostics that no ``# noqa`` on their first line silences."""
    diagnostics = list(diagnostics)
    if not diagnostics or "noqa" not in text.lower():
        return diagnostics
    directives = noqa_by_line(text)
    return [
        d
        for d in diagnostics
        if d.line not in directives or not directives[d.line].silences(d.code)
    ]
