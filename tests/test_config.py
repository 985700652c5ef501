"""Settings: rule selection layers, per-file-ignores, globs and the [tool.loopcheck] table."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopcheck import config as config_module
from loopcheck.config import (
    Config,
    ConfigError,
    Selection,
    enabled_codes,
    load_config,
    parse_selectors,
)
from loopcheck.files import glob_to_regex, path_matches
from loopcheck.rules import Rule


def make_rule(rule_code: str, on: bool = True) -> type[Rule]:
    return type(
        f"Rule{rule_code}",
        (Rule,),
        {
            "code": rule_code,
            "name": f"rule-{rule_code.lower()}",
            "summary": "s",
            "default_enabled": on,
        },
    )


RULES = (
    make_rule("LC101"),
    make_rule("LC102"),
    make_rule("LC108"),
    make_rule("LC201"),
    make_rule("LC205", on=False),
    make_rule("LC900"),
)
DEFAULT = {"LC101", "LC102", "LC108", "LC201", "LC900"}


def enabled(*layers: Selection) -> set[str]:
    return set(enabled_codes(RULES, layers))


def test_default_selection_leaves_rules_off_by_default_out() -> None:
    assert enabled() == DEFAULT


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (Selection(select=("LC1",)), {"LC101", "LC102", "LC108"}),
        (Selection(select=("LC10",)), {"LC101", "LC102", "LC108"}),
        (Selection(select=("LC102",)), {"LC102"}),
        (Selection(select=("ALL",)), DEFAULT),
        (Selection(select=()), set()),
        (Selection(ignore=("LC1",)), {"LC201", "LC900"}),
        (Selection(ignore=("ALL",)), set()),
        (Selection(extend_select=("LC205",)), DEFAULT | {"LC205"}),
        (Selection(select=("LC2",)), {"LC201", "LC205"}),  # a prefix names the family
        (Selection(select=("ALL",), ignore=("LC1",)), {"LC201", "LC900"}),
    ],
)
def test_selectors(layer: Selection, expected: set[str]) -> None:
    assert enabled(layer) == expected


def test_the_more_specific_selector_wins_within_a_layer() -> None:
    assert enabled(Selection(select=("LC102",), ignore=("LC1",))) == {"LC102"}
    assert enabled(Selection(select=("LC1",), ignore=("LC102",))) == {"LC101", "LC108"}


def test_ignore_wins_a_tie() -> None:
    assert "LC102" not in enabled(Selection(extend_select=("LC102",), ignore=("LC102",)))


def test_a_later_select_replaces_the_earlier_layers() -> None:
    from_file = Selection(select=("LC1",), ignore=("LC102",))
    assert enabled(from_file, Selection(select=("LC102", "LC9"))) == {"LC102", "LC900"}


def test_a_later_layer_without_select_adjusts_the_earlier_one() -> None:
    from_file = Selection(select=("LC1",))
    assert enabled(from_file, Selection(ignore=("LC108",), extend_select=("LC201",))) == {
        "LC101",
        "LC102",
        "LC201",
    }


def test_parse_selectors_splits_commas_and_normalises_case() -> None:
    assert parse_selectors(["LC1,lc2", " LC900 ", ""]) == ("LC1", "LC2", "LC900")


@pytest.mark.parametrize("selector", ["LC999", "LC1X", "E501", "", "LC-1"])
def test_unknown_selectors_are_rejected(selector: str) -> None:
    with pytest.raises(ConfigError, match="unknown rule code or prefix"):
        Config(selections=(Selection(select=(selector,)),), rules=RULES)


def test_unknown_selectors_in_per_file_ignores_are_rejected() -> None:
    with pytest.raises(ConfigError):
        Config(per_file_ignores=(("*.py", ("LC7",)),), rules=RULES)


# -- globs and per-file-ignores ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.py", "a.py", True),
        ("*.py", "d/a.py", False),
        ("**/*.py", "a.py", True),
        ("**/*.py", "d/e/a.py", True),
        ("tests/**", "tests/a/b.py", True),
        ("test_?.py", "test_1.py", True),
        ("test_?.py", "test_12.py", False),
        ("[ab].py", "b.py", True),
        ("[!ab].py", "b.py", False),
        ("[ab.py", "[ab.py", True),
        ("a+b(c).py", "a+b(c).py", True),
    ],
)
def test_glob_to_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_to_regex(pattern).fullmatch(path)) is matches


@pytest.mark.parametrize(
    ("pattern", "relative", "matches"),
    [
        ("train.py", "src/train.py", True),  # a bare name matches anywhere
        ("legacy", "src/legacy/old.py", True),  # ... also a directory
        ("src/legacy", "src/legacy/old.py", True),  # an anchored directory covers its files
        ("legacy/old.py", "src/legacy/old.py", False),  # anchored at the root
        ("src/*.py", "src/train.py", True),
        ("src/*.py", "src/sub/train.py", False),
        ("src/**/*.py", "src/sub/train.py", True),
        ("./src/", "src/train.py", True),
        ("test_*.py", "tests/test_loop.py", True),
        ("test_*.py", "tests/loop_test.py", False),
    ],
)
def test_path_matches_relative_to_the_root(
    tmp_path: Path, pattern: str, relative: str, matches: bool
) -> None:
    assert path_matches(tmp_path / relative, pattern, tmp_path) is matches


def test_anchored_patterns_never_match_files_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "project"
    assert not path_matches(tmp_path / "src" / "a.py", "src/*.py", root)
    assert path_matches(tmp_path / "src" / "a.py", "a.py", root)


def test_absolute_patterns(tmp_path: Path) -> None:
    assert path_matches(tmp_path / "x" / "a.py", f"{tmp_path.as_posix()}/x", Path("/elsewhere"))


def test_codes_for_applies_per_file_ignores(tmp_path: Path) -> None:
    config = Config(
        root=tmp_path,
        rules=RULES,
        per_file_ignores=(("tests/**", ("LC1",)), ("setup.py", ("ALL",))),
    )
    assert config.codes_for(tmp_path / "tests" / "unit" / "t.py") == {"LC201", "LC900"}
    assert config.codes_for(tmp_path / "setup.py") == set()
    assert config.codes_for(tmp_path / "train.py") == DEFAULT


# -- the [tool.loopcheck] table ---------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_no_table_gives_the_defaults_rooted_at_the_start(tmp_path: Path) -> None:
    config = load_config(start=tmp_path, rules=RULES)
    assert config.root == tmp_path
    assert config.enabled_codes == DEFAULT
    assert config.source is None


def test_the_nearest_pyproject_with_a_table_is_used(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.loopcheck]\nselect = ["LC1"]\nexclude = ["old"]\n')
    write(tmp_path / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n')  # no table: skipped
    start = tmp_path / "pkg" / "sub"
    start.mkdir()
    config = load_config(start=start, rules=RULES)
    assert config.source == tmp_path / "pyproject.toml"
    assert config.root == tmp_path
    assert config.enabled_codes == {"LC101", "LC102", "LC108"}
    assert config.exclude == ("old",)


def test_a_full_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pyproject.toml",
        """
[tool.loopcheck]
select = ["lc1", "LC900"]
extend-select = ["LC205"]
ignore = ["LC108"]
exclude = ["third_party"]
per-file-ignores = { "tests/*.py" = ["LC101"] }
""",
    )
    config = load_config(path, rules=RULES)
    assert config.enabled_codes == {"LC101", "LC102", "LC205", "LC900"}
    assert config.per_file_ignores == (("tests/*.py", ("LC101",)),)
    assert config.codes_for(tmp_path / "tests" / "t.py") == {"LC102", "LC205", "LC900"}


def test_an_explicit_config_file_must_have_the_table(tmp_path: Path) -> None:
    path = write(tmp_path / "other.toml", "[tool.other]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"no \[tool.loopcheck\] table"):
        load_config(path, rules=RULES)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", rules=RULES)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('selct = ["LC1"]', r"unknown key 'selct' \(did you mean 'select'\?\)"),
        ('select = "LC1"', "select: expected a list of strings"),
        ("ignore = [1]", "ignore: expected a list of strings"),
        ('select = ["LC7"]', "unknown rule code or prefix: 'LC7'"),
        ('per-file-ignores = ["a"]', "per-file-ignores: expected a table"),
        ('per-file-ignores = { "a.py" = "LC1" }', "per-file-ignores 'a.py'"),
        ('per-file-ignores = { "a.py" = ["LC7"] }', "unknown rule code or prefix"),
        ('exclude = [["x"]]', "exclude: expected a list of strings"),
    ],
)
def test_bad_tables_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path / "pyproject.toml", f"[tool.loopcheck]\n{body}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(start=tmp_path, rules=RULES)
    assert str(path) in str(info.value)


def test_the_table_must_be_a_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool]\nloopcheck = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(start=tmp_path, rules=RULES)


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.loopcheck\nselect = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(start=tmp_path, rules=RULES)


def test_without_a_toml_parser_the_table_is_ignored_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(config_module, "tomllib", None)  # Python 3.10 without tomli
    path = write(tmp_path / "pyproject.toml", '[tool.loopcheck]\nselect = ["LC1"]\n')
    assert load_config(start=tmp_path, rules=RULES).enabled_codes == DEFAULT
    assert "ignored" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="Python 3.11"):
        load_config(path, rules=RULES)
