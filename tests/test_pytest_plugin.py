"""The pytest plugin through its real host: pytester sessions with buggy and clean test files,
for the marker, the fixture and ``--loopcheck``."""

import importlib.util
import textwrap

import pytest

pytest_plugins = "pytester"

# pytester's in-process runs drop the modules imported during them: what the inner sessions use
# (torch, the watch) is imported here first, so that it stays imported.
HAS_TORCH = importlib.util.find_spec("torch") is not None
if HAS_TORCH:
    import torch._dynamo  # noqa: F401  (reporting a failure through torch's frames loads it)

    import loopcheck.runtime.watcher  # noqa: F401  (torch and everything the watch uses)

# A test module that trains a tiny model; {clear} is the clear between backward and step (the
# bug, LC102) or nothing.
TRAINING = """
import pytest
import torch
from torch.nn.functional import mse_loss


def train(model, opt, steps=5, bug=False):
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(steps):
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        if bug:
            opt.zero_grad()  # the bug
        opt.step()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)

"""


BUG_LINE = next(i for i, line in enumerate(TRAINING.strip().splitlines(), 1) if "# the bug" in line)


def training_module(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(test_training=TRAINING + textwrap.dedent(body))


@pytest.fixture
def torch_available():
    if not HAS_TORCH:
        pytest.skip("needs torch")


# -- the marker -----------------------------------------------------------------------------------


def test_marker_fails_a_buggy_test_with_the_finding_and_the_trace(pytester, torch_available):
    training_module(
        pytester,
        """
        @pytest.mark.loopcheck
        def test_buggy(model):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)  # made in the test: watched
            train(model, opt, bug=True)

        @pytest.mark.loopcheck
        def test_clean(model):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            train(model, opt)
        """,
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*LoopcheckError: LC102 zero-grad-after-backward at *:{BUG_LINE} (step 0*",
            "test_training.py:*: LoopcheckError",  # the user's line ends the traceback
            "*loopcheck call*",
            "*trace (events up to and including each optimizer step):*",
            "*(since the last step)*zero forward backward zero*",
        ]
    )


def test_marker_sees_optimizers_made_by_fixtures_and_takes_a_mode(pytester, torch_available):
    training_module(
        pytester,
        """
        @pytest.fixture
        def opt(model):
            return torch.optim.SGD(model.parameters(), lr=0.1)

        @pytest.mark.loopcheck(mode="record")
        def test_record(model, opt):
            train(model, opt, bug=True)
            assert True  # runs to its end, then fails with every finding

        @pytest.mark.loopcheck(mode="warn")
        def test_warn(model, opt):
            train(model, opt, bug=True)
        """,
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*loopcheck found training-loop bugs:*",
            "*LC102 zero-grad-after-backward*",
            "*LoopcheckWarning: LC102*",
        ]
    )
    strict = pytester.runpytest_inprocess("-W", "error::loopcheck.LoopcheckWarning")
    strict.assert_outcomes(failed=2)


def test_a_bad_marker_mode_is_an_error(pytester, torch_available):
    training_module(
        pytester,
        """
        @pytest.mark.loopcheck(mode="loud")
        def test_loud(model):
            pass
        """,
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.loopcheck takes mode= one of raise, warn, record*"])


# -- the fixture ----------------------------------------------------------------------------------


def test_fixture_watches_in_raise_mode(pytester, torch_available):
    training_module(
        pytester,
        """
        def test_buggy(model, loopcheck_watch):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            with loopcheck_watch(opt, model):
                train(model, opt, bug=True)

        def test_clean(model, loopcheck_watch):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            with loopcheck_watch(opt, model) as w:
                train(model, opt)
            assert w.mode == "raise" and w.findings == []
        """,
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LoopcheckError: LC102*", "*loopcheck call*"])


def test_mode_option_and_ini(pytester, torch_available):
    training_module(
        pytester,
        """
        def test_mode(loopcheck_watch, model):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            assert loopcheck_watch(opt, model).mode == "record"
        """,
    )
    pytester.makeini("[pytest]\nloopcheck_mode = record\n")
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
    result = pytester.runpytest_inprocess("--loopcheck-mode", "warn")
    result.assert_outcomes(failed=1)  # the option beats the ini


# -- --loopcheck ----------------------------------------------------------------------------------

BUGGY_SCRIPT = """
import torch

model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
"""

CLEAN_SCRIPT = BUGGY_SCRIPT.replace(
    "    loss.backward()\n    optimizer.zero_grad()\n",
    "    optimizer.zero_grad()\n    loss.backward()\n",
)


def test_lint_items_one_per_file(pytester):
    pytester.makepyfile(train_buggy=BUGGY_SCRIPT, train_clean=CLEAN_SCRIPT)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("--loopcheck", "-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*train_buggy.py::loopcheck FAILED*",
            "train_buggy.py:8:5: LC102 `optimizer.zero_grad()` clears the gradients between*",
        ]
    )
    # without the option, nothing is linted
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_lint_honours_the_config_table_and_extra_paths(pytester):
    src = pytester.mkpydir("src")
    (src / "train.py").write_text(BUGGY_SCRIPT.lstrip())
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_inprocess("--loopcheck", "--loopcheck-paths", "src", "-v")
    result.assert_outcomes(passed=3, failed=1)  # the test, its file, src/__init__.py
    result.stdout.fnmatch_lines(["src/train.py:8:5: LC102 *"])
    pytester.makepyprojecttoml('[tool.loopcheck]\nignore = ["LC102"]\n')
    result = pytester.runpytest_inprocess("--loopcheck", "--loopcheck-paths", "src")
    result.assert_outcomes(passed=4)  # __init__.py, train.py, test_nothing.py and the test


def test_lint_by_ini(pytester):
    pytester.makepyfile(train_buggy=BUGGY_SCRIPT)
    pytester.makeini("[pytest]\nloopcheck = true\n")
    pytester.runpytest_inprocess().assert_outcomes(failed=1)


# -- importing the plugin -------------------------------------------------------------------------


def test_the_plugin_is_an_entry_point_and_imports_no_torch(pytester):
    pytester.makepyfile(
        test_imports="""
        import sys

        def test_no_torch(request):
            assert request.config.pluginmanager.has_plugin("loopcheck")
            assert "torch" not in sys.modules
            assert "libcst" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1)
