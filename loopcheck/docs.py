"""The rule documentation pages, generated from the rules' docstrings.

``python -m loopcheck.docs`` rewrites ``docs/rules/*.md``; a test fails when a page and its
docstring disagree, so the pages linked from the JSON output never go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from loopcheck.fix import get_fixer
from loopcheck.output import fix_availability
from loopcheck.rules import ALL_RULES, Rule


def page(rule: type[Rule]) -> str:
    """The Markdown page of one rule."""
    default = "" if rule.default_enabled else "\n*Off by default: select it to enable it.*\n"
    fix = fix_availability(rule)
    return f"# {rule.code} {rule.name}\n\n{rule.summary}.\n{default}\n{fix}\n\n{rule.doc()}\n"


def index() -> str:
    """The table of all rules, as in the README, with the rules ``--fix`` can fix."""
    rows = [
        f"| [{r.code}]({r.code}.md) | {r.name} | {r.summary} | {_fixable(r)} |" for r in ALL_RULES
    ]
    head = "| code | name | what is wrong | `--fix` |\n| --- | --- | --- | --- |\n"
    return "# Rules\n\n" + head + "\n".join(rows) + "\n"


def _fixable(rule: type[Rule]) -> str:
    return "sometimes" if get_fixer(rule.code) is not None else ""


def pages() -> dict[str, str]:
    """File name → content of every generated page."""
    out = {f"{rule.code}.md": page(rule) for rule in ALL_RULES}
    out["README.md"] = index()
    return out


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (directory / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/rules")
    write(target)
    print(f"wrote {len(pages())} pages to {target}")
