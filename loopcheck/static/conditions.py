"""Branch conditions as facts a path carries: their keys, step guards read as residues of a
counter, conditions decided by literal arguments, and how facts are forgotten or shifted."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.static.syntax import chains_in, contains, without_not

if TYPE_CHECKING:
    from loopcheck.static.frames import Frame

Facts = frozenset[tuple[str, bool]]


class FactNames(dict[str, set[str]]):
    """The names each fact's text mentions, and the first part of every one of them: an
    assignment whose names share no first part with them touches no fact (see
    :func:`touches`), whatever facts a path holds."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: set[str] = set()

    def __setitem__(self, text: str, names: set[str]) -> None:
        super().__setitem__(text, names)
        self.heads.update(name.partition(".")[0] for name in names)

    def setdefault(self, text: str, names: set[str]) -> set[str]:  # type: ignore[override]
        found = self.get(text)
        if found is None:
            self[text] = found = names
        return found

    def may_touch(self, names: frozenset[str]) -> bool:
        """Whether assigning ``names`` may touch some fact."""
        return not self.heads.isdisjoint(_heads(names))


@functools.lru_cache(maxsize=1024)
def _heads(names: frozenset[str]) -> frozenset[str]:
    return frozenset(name.partition(".")[0] for name in names)


Render = Callable[[cst.CSTNode], str]


def condition_key(code: Render, test: cst.BaseExpression) -> tuple[str | None, bool]:
    """A branch condition as a fact: its text without a leading ``not``, and its polarity.
    ``None`` for conditions that may change between two evaluations (they call something)."""
    test, negated = without_not(test)
    polarity = not negated
    if contains(test, cst.Call):
        return None, polarity
    return code(test), polarity


def modular(
    code: Render, test: cst.BaseExpression, cycles: Mapping[str, str] | None = None
) -> tuple[str, bool, set[str]] | None:
    """A step guard on a counter, ``(i + k) % N == r`` (or ``!=``), as a fact about ``i``:
    its key names the counter, the modulus and the offset ``k - r``. A counter that cycles
    through a range of length N (``cycles``: its name and N's text) is compared as a residue:
    ``k == 1`` is ``(k - 1) % N == 0``, ``k == N - 1`` is ``(k + 1) % N == 0``."""
    test, negated = without_not(test)
    polarity = not negated
    if cycles:
        found = _cycle_residue(code, test, cycles)
        if found is not None:
            key, equal = found
            return key, polarity == equal, {key.split("%")[1]}
    if type(test) is cst.BinaryOperation and type(test.operator) is cst.Modulo:
        # ``if (i + 1) % n:`` is ``!= 0``
        test = cst.Comparison(
            left=test,
            comparisons=[
                cst.ComparisonTarget(operator=cst.NotEqual(), comparator=cst.Integer("0"))
            ],
        )
    if not (type(test) is cst.Comparison and len(test.comparisons) == 1):
        return None
    comp = test.comparisons[0]
    if type(comp.operator) not in (cst.Equal, cst.NotEqual):
        return None
    if type(comp.comparator) is not cst.Integer:
        return None
    mod = test.left
    if not (type(mod) is cst.BinaryOperation and type(mod.operator) is cst.Modulo):
        return None
    counter, offset = mod.left, 0
    if (
        type(counter) is cst.BinaryOperation
        and type(counter.operator) is cst.Add
        and type(counter.right) is cst.Integer
    ):
        counter, offset = counter.left, int(counter.right.evaluated_value)
    if type(counter) is not cst.Name or contains(mod.right, cst.Call):
        return None
    if type(comp.operator) is cst.NotEqual:
        polarity = not polarity
    offset -= int(comp.comparator.evaluated_value)
    key = f"%{counter.value}%{code(mod.right)}%{offset}"
    return key, polarity, {counter.value} | chains_in(mod.right)


def _cycle_residue(
    code: Render, test: cst.BaseExpression, cycles: Mapping[str, str]
) -> tuple[str, bool] | None:
    """``k == c``, ``k == N`` or ``k == N - c`` on a cycling counter ``k`` of length ``N``:
    the key of the residue it tests, and whether the test is ``==`` (not ``!=``)."""
    if not (type(test) is cst.Comparison and len(test.comparisons) == 1):
        return None
    comp = test.comparisons[0]
    if type(comp.operator) not in (cst.Equal, cst.NotEqual) or type(test.left) is not cst.Name:
        return None
    modulus = cycles.get(test.left.value)
    if modulus is None:
        return None
    value = comp.comparator
    if type(value) is cst.Integer:
        offset = -int(value.evaluated_value)
    elif code(value) == modulus:
        offset = 0
    elif (
        type(value) is cst.BinaryOperation
        and type(value.operator) is cst.Subtract
        and type(value.right) is cst.Integer
        and code(value.left) == modulus
    ):
        offset = int(value.right.evaluated_value)
    else:
        return None
    return f"%{test.left.value}%{modulus}%{offset}", type(comp.operator) is cst.Equal


def modulus_of(key: str) -> str:
    """``%i%N`` for the fact ``%i%N%k``: which counter and modulus a guard tests."""
    return key.rpartition("%")[0]


def truth(test: cst.BaseExpression, constants: dict[str, object]) -> bool | None:
    """The value of a branch condition made only of parameters with literal values."""
    if not constants:
        return None
    if type(test) is cst.Name:
        return bool(constants[test.value]) if test.value in constants else None
    if type(test) is cst.UnaryOperation and type(test.operator) is cst.Not:
        inner = truth(test.expression, constants)
        return None if inner is None else not inner
    if (
        type(test) is cst.Comparison
        and len(test.comparisons) == 1
        and type(test.left) is cst.Name
        and test.left.value in constants
    ):
        comp = test.comparisons[0]
        is_none = type(comp.comparator) is cst.Name and comp.comparator.value == "None"
        if is_none and type(comp.operator) is cst.Is:
            return constants[test.left.value] is None
        if is_none and type(comp.operator) is cst.IsNot:
            return constants[test.left.value] is not None
    if type(test) is cst.BooleanOperation:
        left, right = truth(test.left, constants), truth(test.right, constants)
        if type(test.operator) is cst.And:
            if left is False or right is False:
                return False
            return True if left and right else None
        if left or right:
            return True
        return False if left is False and right is False else None
    return None


def known(facts: Facts, text: str | None) -> bool | None:
    """What the facts say of a condition: True, False, or None when nothing was decided."""
    for fact_text, value in facts:
        if fact_text == text:
            return value
    return None


def residue_excludes(facts: Facts, text: str) -> bool | None:
    """False when another offset of the same counter and modulus is known to hit zero: a
    counter has one residue at a time (moduli are taken to exceed the small offsets)."""
    head = modulus_of(text)
    offset = text.rpartition("%")[2]
    for fact_text, value in facts:
        if value and modulus_of(fact_text) == head and fact_text.rpartition("%")[2] != offset:
            return False
    return None


def shifted(
    facts: Facts, counter: str, fact_names: dict[str, set[str]], positive: bool = True
) -> Facts:
    """The counter grew by one: ``(i + 1) % N != 0`` now is ``i % N != 0`` next time; and
    it is positive (``positive``: when its sign is a fact worth keeping)."""
    prefix = f"%{counter}%"
    out = set()
    for text, value in facts:
        if text == positive_key(counter):
            continue  # grown by one: positive from now on (set below)
        if text.startswith(prefix):
            head, _, offset = text.rpartition("%")
            if int(offset) < -3:
                continue  # too old to matter
            new = f"{head}%{int(offset) - 1}"
            fact_names.setdefault(new, fact_names.get(text, set()))
            out.add((new, value))
        else:
            out.add((text, value))
    if positive:
        out.add((positive_key(counter), True))
    return frozenset(out)


def positive_key(counter: str) -> str:
    """The fact that a counter is above zero (``i > 0``: not the first iteration)."""
    return f"%{counter}%pos"


def counter_sign(test: cst.BaseExpression) -> tuple[str, bool, set[str]] | None:
    """``i > 0``, ``i >= 1``, ``i != 0``, ``i`` (and their negations, ``i == 0``, ``i < 1``)
    as the fact that the counter ``i`` is positive."""
    test, negated = without_not(test)
    polarity = not negated
    if type(test) is cst.Name:
        return positive_key(test.value), polarity, {test.value}
    if not (type(test) is cst.Comparison and len(test.comparisons) == 1):
        return None
    comp = test.comparisons[0]
    if not (type(test.left) is cst.Name and type(comp.comparator) is cst.Integer):
        return None
    bound = comp.comparator.value
    op = type(comp.operator)
    positive = {
        (cst.GreaterThan, "0"): True,
        (cst.GreaterThanEqual, "1"): True,
        (cst.NotEqual, "0"): True,
        (cst.Equal, "0"): False,
        (cst.LessThan, "1"): False,
        (cst.LessThanEqual, "0"): False,
    }.get((op, bound))
    if positive is None:
        return None
    name = test.left.value
    return positive_key(name), polarity == positive, {name}


_NO_NAMES: set[str] = set()


def touches(mentioned: set[str], assigned: frozenset[str]) -> bool:
    """Whether assigning ``assigned`` may change something a condition mentions: the same
    chain, a longer one (``self.cfg = ...`` changes ``self.cfg.flag``) or a shorter one."""
    for chain in mentioned:
        if chain in assigned:
            return True
        for name in assigned:
            if chain.startswith(name + ".") or name.startswith(chain + "."):
                return True
    return False


def forget(
    facts: Facts,
    names: frozenset[str],
    fact_names: dict[str, set[str]],
    keep: Iterable[str] = (),
    touched: dict[tuple[str, frozenset[str]], bool] | None = None,
) -> Facts:
    """Drop the facts that mention a name just assigned, except the modular facts of the
    counters in ``keep`` (they are shifted instead). ``touched`` remembers, per fact and
    assignment, whether the assignment touches the fact (valid while ``fact_names`` keeps
    that fact's names)."""
    if not names or not facts:
        return facts
    memo = {} if touched is None else touched
    hit = []
    for fact in facts:
        mentioned = fact_names.get(fact[0])
        if mentioned is None:
            continue  # no names known: nothing assigned touches it (yet)
        key = (fact[0], names)
        found = memo.get(key)
        if found is None:
            found = memo[key] = touches(mentioned, names)
        if found:
            hit.append(fact)
    if not hit:
        return facts
    prefixes = tuple(f"%{c}%" for c in keep)
    if prefixes:
        hit = [f for f in hit if not f[0].startswith(prefixes)]
    return facts - frozenset(hit) if hit else facts


def guard_flag(frame: Frame, name: str) -> cst.Comparison | None:
    """The step guard a flag holds (``is_last = (i + 1) % n == 0``), when that is its only
    value in ``frame`` or the function around it (a closure), and the guard's modulus is one
    the file tests more than once."""
    current: Frame | None = frame
    while current is not None:
        values = current.local_values.get(name)
        if values or name in current.params:
            break
        current = current.parent
    else:
        return None
    if not values or len(values) != 1 or type(values[0]) is not cst.Comparison:
        return None
    guard = modular(frame.ctx.code, values[0], frame.ctx.cycles)
    if guard is None or modulus_of(guard[0]) not in frame.ctx.tracked_moduli:
        return None
    return values[0]


def enumeration_end(stmt: cst.If) -> cst.If | None:
    """The last ``elif`` of a chain with no ``else`` whose arms each compare one expression
    with a different string (``== "wgan-gp"``, ``== "r1"``), two arms at least."""
    subject: str | None = None
    seen: set[str] = set()
    node: cst.If = stmt
    while True:
        test = node.test
        if not (
            type(test) is cst.Comparison
            and len(test.comparisons) == 1
            and type(test.comparisons[0].operator) is cst.Equal
            and type(test.comparisons[0].comparator) is cst.SimpleString
        ):
            return None
        text = cst.Module([]).code_for_node(test.left)
        value = test.comparisons[0].comparator.evaluated_value
        if subject is not None and text != subject or value in seen:
            return None
        subject = text
        seen.add(value)  # type: ignore[arg-type]
        if node.orelse is None:
            return node if len(seen) > 1 else None
        if type(node.orelse) is not cst.If:
            return None  # an ``else``: nothing to drop
        node = node.orelse
