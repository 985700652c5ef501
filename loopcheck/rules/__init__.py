"""The rule registry: one module per rule, named after the rule."""

from __future__ import annotations

from loopcheck.rules._base import SECTIONS, Finding, Rule, Span
from loopcheck.rules.parse_error import ParseError

ALL_RULES: tuple[type[Rule], ...] = (ParseError,)

RULES_BY_CODE: dict[str, type[Rule]] = {rule.code: rule for rule in ALL_RULES}


def get_rule(code_or_name: str) -> type[Rule] | None:
    """The rule with this code (``LC102``) or name (``zero-grad-after-backward``)."""
    key = code_or_name.strip()
    if key.upper() in RULES_BY_CODE:
        return RULES_BY_CODE[key.upper()]
    return next((rule for rule in ALL_RULES if rule.name == key.lower()), None)


__all__ = ["ALL_RULES", "RULES_BY_CODE", "SECTIONS", "Finding", "Rule", "Span", "get_rule"]
