"""The pytest plugin: the runtime watch for tests that train, and the linter over the session's
files.

* ``@pytest.mark.loopcheck`` (``mode="raise"`` by default, or ``"warn"``/``"record"``) runs the
  test inside :func:`loopcheck.watch_all`, from its setup on: every optimizer, LR scheduler and
  GradScaler the test or its fixtures make is watched from construction. In raise mode the test
  fails at the faulty move with the finding; in record mode it fails at its end with all of
  them; in warn mode it warns (``-W error::loopcheck.LoopcheckWarning`` makes that a failure).
  A failing test's report gets a "loopcheck" section with the step trace.
* The fixture ``loopcheck_watch`` is :func:`loopcheck.watch` preset for tests (raise mode):
  ``with loopcheck_watch(opt, model): train()``.
* ``pytest --loopcheck`` adds one item per Python file pytest visits (and per file under
  ``--loopcheck-paths``) that lints it with the ``[tool.loopcheck]`` settings and fails with
  ``path:line:col: code message``.

Every option has an ini twin (``loopcheck``, ``loopcheck_paths``, ``loopcheck_mode``). Importing
this module imports neither torch nor the linter: a pytest plugin is loaded by every test run
of the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from loopcheck.config import Config
    from loopcheck.runtime.watcher import Watch

MODES = ("raise", "warn", "record")
MARKER = (
    "loopcheck(mode='raise'): watch every optimizer, LR scheduler and GradScaler the test "
    "creates, from construction; a training-loop bug fails the test (mode='warn' warns, "
    "mode='record' fails at the end with every finding)"
)


@dataclass
class _Settings:
    lint: bool
    paths: list[str]
    mode: str
    root: Path
    linted: set[str] = field(default_factory=set)  # files that have a lint item already
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from loopcheck.config import ConfigError, load_config

            try:
                self._config = load_config(start=self.root)
            except ConfigError as exc:
                raise pytest.UsageError(f"loopcheck: {exc}") from None
        return self._config


_SETTINGS = pytest.StashKey[_Settings]()
_WATCH = pytest.StashKey["Watch"]()
_FIXTURE_WATCHES = pytest.StashKey[list["Watch"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopcheck", "training-loop checks (loopcheck)")
    group.addoption(
        "--loopcheck",
        action="store_true",
        default=None,
        help="lint every Python file of the test session (and --loopcheck-paths) for "
        "training-loop bugs, one test item per file",
    )
    parser.addini("loopcheck", type="bool", default=False, help="as --loopcheck")
    group.addoption(
        "--loopcheck-paths",
        action="append",
        default=[],
        metavar="PATH",
        help="more files or directories to lint with --loopcheck (src/, scripts/train.py)",
    )
    parser.addini("loopcheck_paths", type="args", default=[], help="as --loopcheck-paths")
    group.addoption(
        "--loopcheck-mode",
        choices=MODES,
        default=None,
        help="the mode of @pytest.mark.loopcheck and the loopcheck_watch fixture (default: raise)",
    )
    parser.addini("loopcheck_mode", default="raise", help="as --loopcheck-mode")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    mode = config.getoption("loopcheck_mode") or config.getini("loopcheck_mode")
    if mode not in MODES:
        raise pytest.UsageError(f"loopcheck_mode must be one of {', '.join(MODES)}, not {mode!r}")
    lint = config.getoption("loopcheck")
    config.stash[_SETTINGS] = _Settings(
        lint=config.getini("loopcheck") if lint is None else lint,
        paths=[*config.getini("loopcheck_paths"), *config.getoption("loopcheck_paths")],
        mode=mode,
        root=Path(config.rootpath),
    )


# -- the watch ------------------------------------------------------------------------------------


def _marker_mode(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("loopcheck")
    if marker is None:
        return None
    mode = marker.kwargs.get("mode", item.config.stash[_SETTINGS].mode)
    if mode not in MODES or marker.args:
        pytest.fail(
            f"@pytest.mark.loopcheck takes mode= one of {', '.join(MODES)}; got "
            f"{marker.args or mode!r}",
            pytrace=False,
        )
    return mode


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    mode = _marker_mode(item)
    if mode is not None:  # from setup on: optimizers made by fixtures are the test's too
        import loopcheck

        watch = loopcheck.watch_all(mode=mode)
        watch.__enter__()
        item.stash[_WATCH] = watch
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        result = yield
    except BaseException as exc:
        _leave(item, exc)
        if type(exc).__name__ == "LoopcheckError":
            _end_at_the_users_line(exc)
        raise
    watch = _leave(item, None)
    if watch is not None and watch.mode == "record" and watch.findings:
        found = "\n".join(f"  {f}" for f in watch.findings)
        pytest.fail(f"loopcheck found training-loop bugs:\n{found}", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    _leave(item, None)  # setup failed after the watch began: end it all the same
    return (yield)


def _end_at_the_users_line(exc: BaseException) -> None:
    """Cut the traceback after the user's faulty line: the frames of torch and of the watch
    below it say nothing about the bug."""
    import torch

    from loopcheck import runtime

    hidden = (os.path.dirname(torch.__file__), os.path.dirname(runtime.__file__))
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        if tb.tb_next.tb_frame.f_code.co_filename.startswith(hidden):
            tb.tb_next = None
            return
        tb = tb.tb_next


def _leave(item: pytest.Item, exc: BaseException | None) -> Watch | None:
    """End the marker's watch (if still on) and put every watch's trace in the report."""
    watch = item.stash.get(_WATCH, None)
    if watch is not None:
        del item.stash[_WATCH]
        if exc is None:
            watch.__exit__(None, None, None)
        else:
            watch.__exit__(type(exc), exc, exc.__traceback__)
    watches = [*item.stash.get(_FIXTURE_WATCHES, []), *([watch] if watch is not None else [])]
    for each in watches:
        if each.findings or exc is not None:
            item.add_report_section("call", "loopcheck", each.report())
    return watch


@pytest.fixture
def loopcheck_watch(request: pytest.FixtureRequest) -> Callable[..., Watch]:
    """``loopcheck.watch`` in the session's mode (raise by default)::

    def test_training(loopcheck_watch):
        with loopcheck_watch(opt, model):
            train(model, opt)
    """
    mode = request.config.stash[_SETTINGS].mode
    made: list[Watch] = request.node.stash.setdefault(_FIXTURE_WATCHES, [])

    def watch(opt: Any, model: Any = None, **kwargs: Any) -> Watch:
        import loopcheck

        kwargs.setdefault("mode", mode)
        made.append(loopcheck.watch(opt, model, **kwargs))
        return made[-1]

    return watch


# -- the linter -----------------------------------------------------------------------------------


class LintError(Exception):
    """The findings of one file, as ``path:line:col: code message`` lines."""


class LintItem(pytest.Item):
    """One file linted with the ``[tool.loopcheck]`` settings."""

    def runtest(self) -> None:
        from loopcheck.runner import check_file

        report = check_file(self.path, self.config.stash[_SETTINGS].config)
        if report.diagnostics:
            here = self.config.invocation_params.dir
            raise LintError(
                "\n".join(
                    f"{_shown_path(d.path, here)}:{d.line}:{d.column}: {d.code} {d.message}"
                    for d in report.diagnostics
                )
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, LintError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        return self.path, None, f"loopcheck: {self.path.name}"


def _shown_path(path: str, here: Path) -> str:
    """The path relative to where pytest was started, when it lies below it."""
    relative = os.path.relpath(path, here)
    return path if relative.startswith(os.pardir) else relative


class LintFile(pytest.File):
    """A Python file the session visits, seen by the linter."""

    def collect(self) -> list[LintItem]:
        return [LintItem.from_parent(self, name="loopcheck")]


def _lintable(path: Path, settings: _Settings) -> bool:
    from loopcheck.files import is_excluded

    config = settings.config
    name = os.fspath(path)
    return name not in settings.linted and not is_excluded(name, config.exclude, config.root)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> LintFile | None:
    settings = parent.config.stash[_SETTINGS]
    if not settings.lint or file_path.suffix != ".py" or not _lintable(file_path, settings):
        return None
    settings.linted.add(os.fspath(file_path))
    return LintFile.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    settings = config.stash[_SETTINGS]
    if not settings.lint or not settings.paths:
        return
    from loopcheck.files import collect_files

    lint_config = settings.config
    paths = [p if os.path.isabs(p) else os.fspath(settings.root / p) for p in settings.paths]
    found = collect_files(paths, lint_config.exclude, lint_config.root)
    if found.missing:
        raise pytest.UsageError(f"--loopcheck-paths: no such file or directory: {found.missing}")
    for name in found.files:
        path = Path(os.path.abspath(name))
        if os.fspath(path) in settings.linted:
            continue
        settings.linted.add(os.fspath(path))
        items.extend(LintFile.from_parent(session, path=path).collect())
