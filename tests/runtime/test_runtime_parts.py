"""The runtime's pure-Python parts: the shared wrappers, the trace and the findings."""

import json
import types

from loopcheck.runtime import patching
from loopcheck.runtime.findings import RULES, make_finding
from loopcheck.runtime.trace import Trace, render_json, render_text


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
    assert windows[0].events == ("zero", "forward", "backward", "step")
    assert windows[1].codes == ("LC102",)


def test_trace_drops_the_middle_of_a_long_run():
    trace = Trace(limit=2)
    for step in range(10):
        trace.event("step" if step % 2 else "zero")  # no two windows alike
        trace.close(0, step)
    assert [w.first_step for w in trace.windows()] == [0, 1, 8, 9]
    assert trace.dropped == 6
    assert "... 6 steps not kept ..." in render_text(trace, [], [], "header", multi=False)


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
