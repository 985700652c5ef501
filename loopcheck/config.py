"""Settings: which rules run on which files, from one ``[tool.loopcheck]`` table and the CLI.

The table lives in the nearest ``pyproject.toml`` (searched upward from the current directory)
or in the file given with ``--config``::

    [tool.loopcheck]
    select = ["LC1", "LC2"]          # codes or prefixes; "ALL"; replaces the default selection
    extend-select = ["LC205"]        # added to it
    ignore = ["LC108"]
    exclude = ["third_party", "scripts/old_*.py"]   # globs, relative to the table's directory
    per-file-ignores = { "tests/**" = ["LC1"] }

Selection works in layers, as in ruff: the table's, then the command line's. A layer with
``select`` starts from nothing; within a layer the more specific selector wins (``ignore = ["LC1"]``
with ``extend-select = ["LC102"]`` keeps LC102), and on a tie ``ignore`` wins. A rule that is off
by default runs only when a selector names it: its full code or a prefix (``LC205``, ``LC2``);
``ALL`` and the default selection leave it off.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from loopcheck.files import path_matches
from loopcheck.rules import ALL_RULES, Rule

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser, when installed
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

ALL = "ALL"
TABLE = "[tool.loopcheck]"
KEYS = ("select", "extend-select", "ignore", "exclude", "per-file-ignores")
_SELECTOR = re.compile(r"[A-Z]+[0-9]*")


class ConfigError(Exception):
    """Settings that cannot be used: bad TOML, an unknown key or value, an unknown rule code."""


@dataclass(frozen=True)
class Selection:
    """One layer of rule selection: the config table's or the command line's."""

    select: tuple[str, ...] | None = None  # None: keep what the previous layer selected
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def selectors(self) -> tuple[str, ...]:
        return (*(self.select or ()), *self.extend_select, *self.ignore)


@dataclass(frozen=True)
class Config:
    """Everything the runner needs to decide which rules run on a file."""

    root: Path = field(default_factory=Path.cwd)  # exclude and per-file-ignores are relative to it
    selections: tuple[Selection, ...] = ()
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rules: tuple[type[Rule], ...] = ALL_RULES
    source: Path | None = None  # the file the settings were read from

    def __post_init__(self) -> None:
        for layer in self.selections:
            for selector in layer.selectors():
                check_selector(selector, self.rules)
        for _, selectors in self.per_file_ignores:
            for selector in selectors:
                check_selector(selector, self.rules)

    @cached_property
    def enabled_codes(self) -> frozenset[str]:
        """The codes that run on every file, before per-file-ignores."""
        return enabled_codes(self.rules, self.selections)

    def codes_for(self, path: str | os.PathLike[str]) -> frozenset[str]:
        """The codes that run on ``path``: the enabled ones less its per-file-ignores."""
        ignored: set[str] = set()
        for pattern, selectors in self.per_file_ignores:
            if path_matches(path, pattern, self.root):
                for selector in selectors:
                    ignored |= codes_matching(selector, self.rules, enabling=False)
        return self.enabled_codes - ignored

    def rules_for(self, codes: Iterable[str]) -> tuple[type[Rule], ...]:
        wanted = set(codes)
        return tuple(rule for rule in self.rules if rule.code in wanted)

    def with_selection(self, selection: Selection) -> Config:
        """These settings with one more selection layer on top (the command line's)."""
        return replace(self, selections=(*self.selections, selection))


def parse_selectors(values: Iterable[str]) -> tuple[str, ...]:
    """``["LC1,LC2", " lc3 "]`` → ``("LC1", "LC2", "LC3")``."""
    return tuple(
        part.strip().upper() for value in values for part in value.split(",") if part.strip()
    )


def check_selector(selector: str, rules: Iterable[type[Rule]]) -> None:
    """Raise :class:`ConfigError` unless ``selector`` is ``ALL`` or a code or prefix of a rule."""
    if selector == ALL:
        return
    if _SELECTOR.fullmatch(selector) and any(rule.code.startswith(selector) for rule in rules):
        return
    raise ConfigError(f"unknown rule code or prefix: {selector!r}")


def codes_matching(selector: str, rules: Iterable[type[Rule]], *, enabling: bool) -> set[str]:
    """The codes a selector covers; when enabling, ``ALL`` leaves rules off by default out."""
    if selector == ALL:
        return {rule.code for rule in rules if rule.default_enabled or not enabling}
    return {rule.code for rule in rules if rule.code.startswith(selector)}


def enabled_codes(
    rules: Iterable[type[Rule]], selections: Iterable[Selection] = ()
) -> frozenset[str]:
    """Apply the selection layers, in order, to the rules on by default."""
    rules = tuple(rules)
    enabled = {rule.code for rule in rules if rule.default_enabled}
    for layer in selections:
        if layer.select is not None:
            enabled = set()
        for selector, enabling in _ordered_moves(layer):
            codes = codes_matching(selector, rules, enabling=enabling)
            enabled = enabled | codes if enabling else enabled - codes
    return frozenset(enabled)


def _ordered_moves(layer: Selection) -> list[tuple[str, bool]]:
    """The layer's selectors, least specific first, so the most specific one decides."""
    moves = [(selector, True) for selector in (*(layer.select or ()), *layer.extend_select)]
    moves += [(selector, False) for selector in layer.ignore]
    return sorted(moves, key=lambda move: (_specificity(move[0]), not move[1]))


def _specificity(selector: str) -> int:
    return 0 if selector == ALL else len(selector)


# -- reading the table --------------------------------------------------------------------------


def load_config(
    config_file: Path | None = None,
    *,
    start: Path | None = None,
    rules: tuple[type[Rule], ...] = ALL_RULES,
) -> Config:
    """The settings in ``config_file``, or in the nearest ``pyproject.toml`` with a
    ``[tool.loopcheck]`` table above ``start`` (the current directory); defaults if none."""
    start = Path(os.path.abspath(start if start is not None else Path.cwd()))
    if config_file is not None:
        table = _read_table(config_file, required=True)
        return config_from_table(table or {}, config_file, rules=rules)
    found = find_config(start)
    if found is None:
        return Config(root=start, rules=rules)
    path, table = found
    return config_from_table(table, path, rules=rules)


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``pyproject.toml`` at or above ``start`` that has a ``[tool.loopcheck]``
    table, and the table."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if not candidate.is_file():
            continue
        table = _read_table(candidate, required=False)
        if table is not None:
            return candidate, table
    return None


def _read_table(path: Path, *, required: bool) -> dict[str, Any] | None:
    """The ``[tool.loopcheck]`` table of a TOML file, or None when it has none."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not required and b"loopcheck" not in raw:
        return None
    if tomllib is None:
        if required:
            raise ConfigError(f"reading {path} needs Python 3.11+ or the 'tomli' package")
        print(
            f"loopcheck: warning: {TABLE} in {path} ignored: "
            "reading it needs Python 3.11+ or the 'tomli' package",
            file=sys.stderr,
        )
        return None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    table = document.get("tool", {}).get("loopcheck") if isinstance(document, dict) else None
    if table is None:
        if required:
            raise ConfigError(f"{path} has no {TABLE} table")
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {TABLE} must be a table")
    return table


def config_from_table(
    table: Mapping[str, Any], source: Path, *, rules: tuple[type[Rule], ...] = ALL_RULES
) -> Config:
    """Validate a ``[tool.loopcheck]`` table read from ``source``; errors name the key."""
    try:
        _check_keys(table)
        select = table.get("select")
        selection = Selection(
            select=None if select is None else parse_selectors(_strings(table, "select")),
            extend_select=parse_selectors(_strings(table, "extend-select")),
            ignore=parse_selectors(_strings(table, "ignore")),
        )
        return Config(
            root=Path(os.path.abspath(source)).parent,
            selections=(selection,),
            exclude=_strings(table, "exclude"),
            per_file_ignores=_per_file_ignores(table),
            rules=rules,
            source=source,
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {TABLE} {exc}") from None


def _check_keys(table: Mapping[str, Any]) -> None:
    for key in table:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; known keys: {', '.join(KEYS)}")


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return _string_list(table.get(key, []), key)


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{what}: expected a list of strings, got {value!r}")
    return tuple(value)


def _per_file_ignores(table: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    value = table.get("per-file-ignores", {})
    if not isinstance(value, dict):
        raise ConfigError(f"per-file-ignores: expected a table of glob = [codes], got {value!r}")
    return tuple(
        (pattern, parse_selectors(_string_list(codes, f"per-file-ignores {pattern!r}")))
        for pattern, codes in value.items()
    )
