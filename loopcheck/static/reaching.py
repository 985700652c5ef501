"""Which assignments of a name can reach a statement of one function: reaching definitions,
approximated on the block structure (an unconditional assignment before the statement hides
the earlier ones; assignments in branches and loop bodies may reach)."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from loopcheck.static.syntax import names_in
from loopcheck.static.tree import is_expression, kids, walk

Statement = cst.CSTNode


@dataclass(frozen=True)
class Definition:
    """One assignment of a name: the statement holding it and the value assigned (for a loop
    target, the iterable; ``augmented`` for ``x += value``)."""

    statement: Statement
    value: cst.BaseExpression
    augmented: bool = False
    loop_target: bool = False
    operator: type | None = None  # the operator of ``x op= value`` (cst.DivideAssign, ...)


class Layout:
    """The blocks of one function body: where each statement stands, and what it assigns."""

    def __init__(self, function: cst.FunctionDef | cst.Module) -> None:
        # statement id -> (its block, its index there, the compound statement owning the block)
        self.place: dict[int, tuple[list[Statement], int, Statement | None]] = {}
        self._direct: dict[int, dict[str, list[Definition]]] = {}
        self._nested: dict[int, dict[str, list[Definition]]] = {}
        self._reaching: dict[tuple[str, int], list[Definition] | None] = {}
        self._blocks(function, None)

    def _blocks(self, node: cst.CSTNode, owner: Statement | None) -> None:
        for block in _child_blocks(node):
            for i, stmt in enumerate(block):
                self.place[id(stmt)] = (block, i, owner)
                if type(stmt) not in (cst.SimpleStatementLine, cst.FunctionDef, cst.ClassDef):
                    self._blocks(stmt, stmt)

    def reaching(self, name: str, at: Statement) -> list[Definition] | None:
        """The definitions of ``name`` that may reach ``at``; None when the value may come
        from the function's entry (a parameter, a global, a closure variable). The list is
        shared: callers must not change it."""
        memo = (name, id(at))
        if memo in self._reaching:
            return self._reaching[memo]
        found = self._reaching[memo] = self._reach(name, at)
        return found

    def _reach(self, name: str, at: Statement) -> list[Definition] | None:
        found: list[Definition] = []
        current: Statement | None = at
        while current is not None and id(current) in self.place:
            block, index, owner = self.place[id(current)]
            for stmt in reversed(block[:index]):
                direct = self.direct(stmt).get(name)
                if direct:
                    found.extend(direct)
                    if not any(d.augmented for d in direct):
                        return found
                    continue
                found.extend(self.nested(stmt).get(name, ()))
                if self.assigns_on_every_branch(stmt, name):
                    return found  # ``if amp: loss = ... else: loss = ...``: none older reaches
            if type(owner) is cst.For and name in names_in(owner.target):
                found.append(Definition(owner, owner.iter, loop_target=True))
                return found
            if type(owner) in (cst.For, cst.While):
                # the back edge: what the rest of the loop body assigns reaches the top
                found.extend(self.nested(owner).get(name, ()))
            current = owner
        return found or None

    def assigns_on_every_branch(self, stmt: Statement, name: str) -> bool:
        """Whether an ``if`` with an ``else`` assigns ``name`` plainly on each branch (at the
        top level of the branch, or again in every branch of an ``if`` there)."""
        if type(stmt) is not cst.If or stmt.orelse is None:
            return False
        branches: list[cst.BaseSuite] = [stmt.body]
        orelse = stmt.orelse
        if type(orelse) is cst.If:
            if not self.assigns_on_every_branch(orelse, name):
                return False
        else:
            branches.append(orelse.body)
        return all(self._block_assigns(branch, name) for branch in branches)

    def _block_assigns(self, suite: cst.BaseSuite, name: str) -> bool:
        body = suite.body if type(suite) is cst.IndentedBlock else [suite]
        for inner in body:
            direct = self.direct(inner).get(name)  # type: ignore[arg-type]
            if direct and not any(d.augmented for d in direct):
                return True
            if self.assigns_on_every_branch(inner, name):  # type: ignore[arg-type]
                return True
        return False

    def before(self, stmt: Statement, loops: list[cst.CSTNode]) -> set[int]:
        """The ids of every node of the statements that run before ``stmt`` in the body of the
        innermost of ``loops`` around it (its earlier siblings, and theirs up the blocks)."""
        out: set[int] = set()
        stop = {id(loop) for loop in loops}
        current: Statement | None = stmt
        while current is not None and id(current) in self.place:
            block, index, owner = self.place[id(current)]
            for earlier in block[:index]:
                out.update(id(node) for node in walk(earlier))
            if owner is None or id(owner) in stop:
                break
            current = owner
        return out

    def direct(self, stmt: Statement) -> dict[str, list[Definition]]:
        """Assignments that certainly run when ``stmt`` does (a ``with`` body is unconditional)."""
        key = id(stmt)
        if key not in self._direct:
            out: dict[str, list[Definition]] = {}
            if type(stmt) in (cst.SimpleStatementLine, cst.SimpleStatementSuite):
                for small in stmt.body:
                    operator = type(small.operator) if type(small) is cst.AugAssign else None
                    for target, value, aug in _assigned(small):
                        for name in _target_names(target):
                            definition = Definition(stmt, value, aug, operator=operator)
                            out.setdefault(name, []).append(definition)
            elif type(stmt) is cst.With and type(stmt.body) is cst.IndentedBlock:
                for inner in stmt.body.body:
                    for name, defs in self.direct(inner).items():
                        out[name] = defs  # the latest one in the body wins
            self._direct[key] = out
        return self._direct[key]

    def nested(self, stmt: Statement) -> dict[str, list[Definition]]:
        """Every assignment inside a statement (in branches, loops, handlers)."""
        key = id(stmt)
        if key not in self._nested:
            out: dict[str, list[Definition]] = {}
            stack: list[cst.CSTNode] = [stmt]
            while stack:
                node = stack.pop()
                if type(node) in (cst.SimpleStatementLine, cst.SimpleStatementSuite):
                    for name, defs in self.direct(node).items():
                        out.setdefault(name, []).extend(defs)
                    continue
                if type(node) in (cst.FunctionDef, cst.ClassDef) or is_expression(node):
                    continue
                if type(node) is cst.For:
                    for name in names_in(node.target):
                        out.setdefault(name, []).append(Definition(node, node.iter, False, True))
                stack.extend(kids(node))
            self._nested[key] = out
        return self._nested[key]


def _child_blocks(node: cst.CSTNode) -> list[list[Statement]]:
    """The statement lists directly inside a function body or compound statement."""
    out: list[list[Statement]] = []
    if type(node) is cst.Module:
        return [list(node.body)]
    stack = list(kids(node))
    while stack:
        child = stack.pop(0)
        if type(child) is cst.IndentedBlock:
            out.append(list(child.body))
        elif type(child) is cst.SimpleStatementSuite:
            out.append([child])
        elif type(child) in (cst.Else, cst.ExceptHandler, cst.ExceptStarHandler, cst.Finally):
            stack.insert(0, child.body)
        elif type(child) is cst.MatchCase:
            stack.insert(0, child.body)
        elif type(child) is cst.If and type(node) is cst.If:
            out.append([child])  # ``elif``: a statement of its own in the else branch
    return out


def _assigned(
    small: cst.CSTNode,
) -> list[tuple[cst.BaseExpression, cst.BaseExpression, bool]]:
    if type(small) is cst.Assign:
        return [(t.target, small.value, False) for t in small.targets]
    if type(small) is cst.AnnAssign and small.value is not None:
        return [(small.target, small.value, False)]
    if type(small) is cst.AugAssign:
        return [(small.target, small.value, True)]
    return []


def _target_names(target: cst.BaseExpression) -> list[str]:
    if type(target) is cst.Name:
        return [target.value]
    if type(target) in (cst.Tuple, cst.List):
        out: list[str] = []
        for element in target.elements:
            value = element.value
            if type(value) is cst.StarredElement:
                value = value.value
            out.extend(_target_names(value))  # type: ignore[arg-type]
        return out
    return []
