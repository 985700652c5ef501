"""The runtime's pure-Python parts: the shared wrappers, the trace and the findings."""

import json
import types

from loopcheck.runtime import patching
from loopcheck.runtime.findings import RULES, make_finding
from loopcheck.runtime.trace import Trace, render_json, render_text, tokens


class Greeter:
    def hello(self, name):
        return f"hello {name}"


def test_wrap_an_instance_then_restore_its_class_method():
    greeter = Greeter()
    calls = []

    def around(call, *args, **kwargs):
        calls.append(args)
        return call(*args, **kwargs).upper()

    handle = patching.wrap(greeter, "hello", around)
    assert greeter.hello("ada") == "HELLO ADA"
    assert Greeter().hello("bob") == "hello bob"  # the class is untouched
    assert calls == [("ada",)]
    handle.remove()
    handle.remove()  # twice is harmless
    assert "hello" not in vars(greeter)
    assert patching.installed() == 0


def test_arounds_chain_and_leave_in_any_order():
    module = types.ModuleType("m")
    module.f = lambda x: [x]
    original = module.f
    first = patching.wrap(module, "f", lambda call, x: ["first", *call(x)])
    second = patching.wrap(module, "f", lambda call, x: ["second", *call(x)])
    assert module.f(1) == ["first", "second", 1]
    first.remove()  # not the last one in: the wrapper stays for the second
    assert module.f(1) == ["second", 1]
    second.remove()
    assert module.f is original


def test_an_instance_attribute_of_its_own_is_put_back():
    greeter = Greeter()
    own = greeter.hello = lambda name: f"hi {name}"
    handle = patching.wrap(greeter, "hello", lambda call, name: call(name) + "!")
    assert greeter.hello("ada") == "hi ada!"
    handle.remove()
    assert vars(greeter)["hello"] is own


def test_a_wrapper_wrapped_again_by_someone_else_is_left_in_place():
    greeter = Greeter()
    handle = patching.wrap(greeter, "hello", lambda call, name: call(name) + "!")
    theirs = greeter.hello
    greeter.hello = lambda name: theirs(name) + "?"
    handle.remove()
    assert greeter.hello("ada") == "hello ada?"  # ours passes through now


def test_trace_merges_repeated_steps_and_keeps_its_ends():
    trace = Trace(limit=2)
    for step in range(10):
        for event in ("zero", "forward", "forward", "backward", "step"):
            trace.event(event)
        if step == 4:
            trace.code("LC102")
        trace.close(0, step)
    trace.event("zero")
    windows = trace.windows()
    assert [(w.first_step, w.last_step, w.count) for w in windows] == [
        (0, 3, 4),
        (4, 4, 1),
        (5, 9, 5),
        (-1, -1, 1),
    ]
    assert " ".join(windows[0].events) == "zero forward backward step"
    assert windows[1].codes == ("LC102",)


def test_trace_drops_the_middle_of_a_long_run():
    trace = Trace(limit=2)
    for step in range(30):
        trace.event(f"move{step}")  # no two windows alike
        trace.close(0, step)
    # the first `limit` entries, and the last ones (`limit` and room to fold a cycle)
    assert [w.first_step for w in trace.windows()] == [0, 1, *range(20, 30)]
    assert trace.dropped == 18
    assert "... 18 steps not kept ..." in render_text(trace, [], [], "header", multi=False)


def test_repeated_moves_in_a_window_are_one_token_and_windows_merge_across_counts():
    """Accumulation's (forward backward) x4; LBFGS's closure evaluations, 3 or 4 per step,
    fold into one line."""
    assert [str(t) for t in tokens(["zero", "forward", "backward"] * 2 + ["step"])] == [
        "(zero forward backward) x2",
        "step",
    ]
    assert [str(t) for t in tokens(["zero", *["forward", "backward"] * 4, "clip", "step"])] == [
        "zero",
        "(forward backward) x4",
        "clip step",
    ]
    trace = Trace()
    for step, evaluations in enumerate([4, 3, 4, 4, 2]):
        for _ in range(evaluations):
            for event in ("zero", "forward", "backward"):
                trace.event(event)
        trace.event("step")
        trace.close(0, step)
    (window,) = trace.windows()
    assert (window.first_step, window.last_step, window.count) == (0, 4, 5)
    assert window.events == ("(zero forward backward) x2-4", "step")


def test_a_repeating_sequence_of_windows_folds_into_a_cycle():
    """A critic stepping 5 times per generator step, for 40 generator steps: one cycle."""
    trace = Trace()
    critic = generator = 0
    for _ in range(40):
        for _ in range(5):
            for event in ("zero[0]", "forward", "backward[0,1]", "step[0]"):
                trace.event(event)
            trace.close(0, critic)
            critic += 1
        for event in ("zero[1]", "forward", "backward[0,1]", "step[1]"):
            trace.event(event)
        trace.close(1, generator)
        generator += 1
    (cycle,) = trace.entries()
    assert cycle.repeats == 40
    d, g = cycle.windows
    assert (d.optimizer, d.first_step, d.last_step, d.count) == (0, 0, 199, 5)
    assert (g.optimizer, g.first_step, g.last_step, g.count) == (1, 0, 39, 1)
    text = render_text(trace, [], [], "header", multi=True)
    assert "40 times (steps[0] 0-199, steps[1] 0-39):" in text
    assert "steps[0] (x5 each)" in text
    assert len(trace.head) + len(trace.tail) <= 3  # folded as it went


def test_findings_are_worded_from_the_catalog_and_render():
    finding = make_finding("LC102", 3, "detail", "train.py", 7, 0)
    assert finding.name == "zero-grad-after-backward"
    assert finding.where == "train.py:7"
    assert "(detail)" in finding.message and "Fix:" in finding.message
    assert str(finding).startswith("LC102 zero-grad-after-backward at train.py:7 (step 3")
    trace = Trace()
    trace.event("zero")
    trace.close(0, 0)
    report = json.loads(render_json(trace, [finding], [2], {"steps": [1]}))
    assert report["findings"][0] == {**finding.to_dict(), "count": 2}
    text = render_text(trace, [finding], [2], "header", multi=False)
    assert "(x2)" in text


def test_every_runtime_code_is_in_the_catalog_with_a_name_and_a_fix():
    for code, (name, what, fix) in RULES.items():
        assert code.startswith("LC") and name and what and fix
