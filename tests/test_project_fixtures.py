"""The linter on annotated multi-file projects (``fixtures/projects/<name>/``): all the files of a
project are linted together, so that calls are followed across them; every ``# error: LCxxx``
comment, in any file, is a finding expected on its line, and nothing else may be reported.
A project whose name starts with a rule code holds bugs; the others are correct code. The result
must not depend on the order in which the files are linted."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_fixtures import expected

from loopcheck.api import lint_source
from loopcheck.static import Project

PROJECTS = Path(__file__).resolve().parent.parent / "fixtures" / "projects"

Found = set[tuple[str, int, str]]


def projects() -> list[Path]:
    return sorted(p for p in PROJECTS.iterdir() if p.is_dir())


def sources(project: Path) -> list[Path]:
    return sorted(project.rglob("*.py"))


def expected_in(project: Path) -> Found:
    return {
        (path.relative_to(project).as_posix(), line, code)
        for path in sources(project)
        for line, code in expected(path.read_text(errors="replace"))
    }


def _default_rules(project: Path) -> tuple:
    """The default rules, plus an off-by-default one the project is named after."""
    from loopcheck.rules import ALL_RULES

    named = project.name.split("_")[0].upper()
    return tuple(r for r in ALL_RULES if r.default_enabled or r.code == named)


def lint_in_order(project: Path, order: list[Path]) -> Found:
    """Lint every file of ``project`` in ``order`` with one Project of all of them, as a run over
    the directory does; findings are keyed by the file they lie in, which may be another one."""
    linted = Project(str(path) for path in order)
    found: Found = set()
    for path in order:
        for d in lint_source(path.read_bytes(), str(path), _default_rules(project), linted):
            where = Path(d.path).resolve().relative_to(project.resolve()).as_posix()
            found.add((where, d.line, d.code))
    return found


@pytest.mark.parametrize("project", projects(), ids=lambda p: p.name)
def test_project_reports_exactly_its_annotations(project: Path) -> None:
    want = expected_in(project)
    if project.name[:2].lower() == "lc":
        assert want, "a bug project names the findings it expects"
    else:
        assert want == set(), "a clean project carries no expectations"
    assert lint_in_order(project, sources(project)) == want


@pytest.mark.parametrize("project", projects(), ids=lambda p: p.name)
def test_project_findings_do_not_depend_on_the_order_of_files(project: Path) -> None:
    files = sources(project)
    assert len(files) > 1, "a project fixture has several files"
    first = lint_in_order(project, files)
    for order in (files[::-1], files[1:] + files[:1], files[-1:] + files[:-1]):
        assert lint_in_order(project, order) == first, [p.name for p in order]


def test_every_project_fixture_has_a_clean_and_a_buggy_kind() -> None:
    names = [p.name for p in projects()]
    assert any(n[:2].lower() == "lc" for n in names)
    assert any(n[:2].lower() != "lc" for n in names)
