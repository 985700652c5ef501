"""LC900 parse-error."""

from __future__ import annotations

from collections.abc import Iterable

from loopcheck.rules._base import Finding, Rule


class ParseError(Rule):
    """## What it does
    Reports a file loopcheck could not parse or decode, instead of crashing or skipping it
    silently.

    ## Why is this bad?
    A file that cannot be read cannot be checked: any training-loop bug in it goes unseen. The
    other files are still linted.

    ## Example
    ```python
    for batch in loader
        loss.backward()
    ```

    ## Use instead
    ```python
    for batch in loader:
        loss.backward()
    ```
    """

    code = "LC900"
    name = "parse-error"
    summary = "the file could not be parsed"

    def check(self, model: object) -> Iterable[Finding]:
        return ()  # reported by the engine when parsing fails
