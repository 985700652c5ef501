"""Where a value sits in what code assigns or returns: a name's place in a tuple it is
unpacked from, an element of a returned tuple, a field of a returned record, and what a
class's methods store on ``self`` (assigned, or unpacked from a call)."""

from __future__ import annotations

import libcst as cst

from loopcheck.static.bodies import function_layout
from loopcheck.static.classes import ClassInfo
from loopcheck.static.frames import Frame
from loopcheck.static.syntax import assignments
from loopcheck.static.tree import walk


def record_field(
    frame: Frame,
    value: cst.BaseExpression,
    at: cst.CSTNode,
    pick: tuple[int | None, str | None],
) -> list[tuple[cst.BaseExpression, cst.CSTNode]] | None:
    """The values a returned record's field holds: ``return SACLosses(qf2_loss=qf2_loss, ...),
    stats`` (element ``index``, field ``qf2_loss``), the record built in place or assigned to a
    name first. None: not such a record."""
    index, field = pick
    if index is not None:
        element = tuple_element(value, index)
        if element is None:
            return None
        value = element
    if field is None:
        return [(value, at)]  # the element itself (``return z, mu, logvar``)
    builds: list[tuple[cst.BaseExpression, cst.CSTNode]] = [(value, at)]
    if type(value) is cst.Name:
        defs = function_layout(frame).reaching(value.value, at)  # type: ignore[arg-type]
        if not defs:
            return None
        builds = [(d.value, d.statement) for d in defs]
    out = []
    for built, where in builds:
        if type(built) is not cst.Call:
            return None
        found = next((a.value for a in built.args if a.keyword and a.keyword.value == field), None)
        if found is None:
            return None
        out.append((found, where))
    return out


def tuple_place(frame: Frame, name: str, value: cst.BaseExpression) -> int | None:
    """The place of ``name`` in the tuple target ``value`` is unpacked into (``loss, n =
    helper(...)``); None: ``name`` takes all of it."""
    return next((i for i, v in frame.tuple_values.get(name, ()) if v is value), None)


def tuple_element(value: cst.BaseExpression, index: int) -> cst.BaseExpression | None:
    """Element ``index`` of a tuple or list literal (a returned ``loss, stats``); None: not
    one, too short, or a starred element before it shifts the places."""
    if type(value) not in (cst.Tuple, cst.List) or index >= len(value.elements):
        return None
    if any(type(e) is not cst.Element for e in value.elements[: index + 1]):
        return None
    return value.elements[index].value


def unpacked_on_self(
    info: ClassInfo,
) -> dict[str, list[tuple[ClassInfo, cst.FunctionDef, cst.Call, int]]]:
    """The attributes a class's methods unpack a call into (``self.z, self.mu, self.logvar =
    self.encode(x)``): by attribute, the method, the call and the place; once per class."""

    def build() -> dict[str, list[tuple[ClassInfo, cst.FunctionDef, cst.Call, int]]]:
        found: dict[str, list[tuple[ClassInfo, cst.FunctionDef, cst.Call, int]]] = {}
        for method in info.methods.values():
            for target, value in assignments(method.body):
                if type(target) not in (cst.Tuple, cst.List) or type(value) is not cst.Call:
                    continue
                for i, element in enumerate(target.elements):  # type: ignore[attr-defined]
                    if type(element) is not cst.Element:
                        break  # a starred target shifts the places after it
                    if is_self_attribute(element.value):
                        found.setdefault(element.value.attr.value, []).append(
                            (info, method, value, i)
                        )
        return found

    return info.ctx.remember("unpacked on self", info.node, build)


def computed(value: cst.BaseExpression) -> bool:
    """A value computed by calls: ``self.net_g(self.lq)``, and the arithmetic on such values
    (pix2pix's ``self.loss_G = self.loss_G_GAN + self.loss_G_L1``, ``-pred.mean()``)."""
    if type(value) is cst.Call:
        return True
    if type(value) in (cst.BinaryOperation, cst.UnaryOperation):
        return any(type(node) is cst.Call or is_self_attribute(node) for node in walk(value))
    return False


def is_self_attribute(node: cst.CSTNode) -> bool:
    return (
        type(node) is cst.Attribute and type(node.value) is cst.Name and node.value.value == "self"
    )
