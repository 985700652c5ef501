"""Path states: the protocol state of every optimizer on one path through the code, the branch
facts decided on it, and how sets of paths are joined and kept bounded."""

from __future__ import annotations

from dataclasses import dataclass, field

from loopcheck.protocol import UNKNOWN, OptState

MAX_STATES = 96


class PathState:
    """The protocol state of every optimizer on one path, plus the branch facts decided on it.
    Immutable. Paths live in sets that are joined over and over: the hash is computed once."""

    __slots__ = ("opts", "facts", "last_zeroed", "evaluating", "_hash", "_protocol")

    def __init__(
        self,
        opts: tuple[tuple[str, OptState], ...] = (),
        facts: frozenset[tuple[str, bool]] = frozenset(),
        last_zeroed: frozenset[str] = frozenset(),
        evaluating: frozenset[tuple[str, object, bool]] = frozenset(),
    ) -> None:
        self.opts = opts
        self.facts = facts
        # the optimizers cleared by the latest run of consecutive clears (a ``reset_grad()``
        # helper clears several): a backward right after them feeds them
        self.last_zeroed = last_zeroed
        # models put in eval mode on this path: (model, the ``eval()`` call that did it, whether
        # the back edge of a loop around that call was crossed since)
        self.evaluating = evaluating
        self._hash = 0
        self._protocol = 0

    def __hash__(self) -> int:
        if not self._hash:
            key = (self.opts, self.facts, self.last_zeroed, self.evaluating)
            self._hash = hash(key) or 1
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PathState)
            and hash(self) == hash(other)
            and self.opts == other.opts
            and self.facts == other.facts
            and self.last_zeroed == other.last_zeroed
            and self.evaluating == other.evaluating
        )

    def __repr__(self) -> str:
        return f"PathState({self.opts!r}, {sorted(self.facts)!r}, {sorted(self.last_zeroed)!r})"

    def with_evaluating(self, evaluating: frozenset[tuple[str, object, bool]]) -> PathState:
        if evaluating == self.evaluating:
            return self
        return PathState(self.opts, self.facts, self.last_zeroed, evaluating)

    def protocol_hash(self) -> int:
        """The hash of everything but the facts (computed once)."""
        if not self._protocol:
            self._protocol = hash((self.opts, self.last_zeroed, self.evaluating)) or 1
        return self._protocol

    def same_protocol(self, other: PathState) -> bool:
        return (
            self.opts == other.opts
            and self.last_zeroed == other.last_zeroed
            and self.evaluating == other.evaluating
        )

    def get(self, key: str) -> OptState:
        for k, s in self.opts:
            if k == key:
                return s
        return UNKNOWN

    def with_opt(self, key: str, state: OptState) -> PathState:
        opts = []
        for k, s in self.opts:
            if k == key:
                if s == state:
                    return self  # unchanged: the same path
                continue
            opts.append((k, s))
        opts.append((key, state))
        opts.sort(key=_first)
        return PathState(tuple(opts), self.facts, self.last_zeroed, self.evaluating)

    def without_opt(self, key: str) -> PathState:
        """The optimizer ``key`` built anew: nothing known of it yet."""
        if all(k != key for k, _ in self.opts):
            return self
        opts = tuple((k, s) for k, s in self.opts if k != key)
        return PathState(opts, self.facts, self.last_zeroed, self.evaluating)

    def with_facts(self, facts: frozenset[tuple[str, bool]]) -> PathState:
        if facts is self.facts:
            return self
        return PathState(self.opts, facts, self.last_zeroed, self.evaluating)

    def with_fact(self, text: str, value: bool) -> PathState:
        if (text, value) in self.facts:
            return self
        return PathState(self.opts, self.facts | {(text, value)}, self.last_zeroed, self.evaluating)

    def with_zeroed(self, last_zeroed: frozenset[str]) -> PathState:
        if last_zeroed == self.last_zeroed:
            return self
        return PathState(self.opts, self.facts, last_zeroed, self.evaluating)

    def keys(self) -> list[str]:
        return [k for k, _ in self.opts]


@dataclass
class Flow:
    """Where the paths of a block went."""

    normal: set[PathState] = field(default_factory=set)
    breaks: set[PathState] = field(default_factory=set)
    continues: set[PathState] = field(default_factory=set)
    returns: set[PathState] = field(default_factory=set)


def merge(a: Flow, b: Flow) -> Flow:
    return Flow(
        normal=a.normal | b.normal,
        breaks=a.breaks | b.breaks,
        continues=a.continues | b.continues,
        returns=a.returns | b.returns,
    )


def join_complements(states: set[PathState]) -> set[PathState]:
    """Join the paths that differ only in one fact, held true on one and false on the other:
    the branch that decided it changed nothing else, so one path with the fact undecided says
    the same (a later test of it splits again). Lossless, unlike :func:`cap`'s join; without
    it every condition a script tests twice (``if args.offload:``) doubles the paths."""
    while len(states) > 1:
        groups: dict[int, list[PathState]] = {}
        for state in states:
            if state.facts:
                groups.setdefault(state.protocol_hash(), []).append(state)
        joined: dict[PathState, PathState] = {}
        for group in groups.values():
            if len(group) < 2:
                continue
            by_facts = {state.facts: state for state in group}
            for state in group:
                if state in joined:
                    continue
                for text, value in state.facts:
                    if not value:
                        continue
                    rest = state.facts - {(text, True)}
                    partner = by_facts.get(rest | {(text, False)})
                    if (
                        partner is not None
                        and partner not in joined
                        and partner.same_protocol(state)
                    ):
                        merged = state.with_facts(rest)
                        joined[state] = joined[partner] = merged
                        break
        if not joined:
            return states
        states = {joined.get(state, state) for state in states}
    return states


def _first(item: tuple[str, OptState]) -> str:
    return item[0]


def cap(states: set[PathState]) -> set[PathState]:
    """Keep the number of paths bounded: first join paths whose protocol states agree (keeping
    the branch facts they share), then keep a stable subset. Paths are dropped rather than
    their facts forgotten: a path without its facts may take branches together that the code
    never takes together (a false alarm), a dropped path can only hide a finding."""
    if len(states) <= MAX_STATES:
        return states
    joined: dict[tuple[object, ...], PathState] = {}
    for state in states:
        key = (state.opts, state.last_zeroed, state.evaluating)
        other = joined.get(key)
        joined[key] = state if other is None else other.with_facts(other.facts & state.facts)
    states = set(joined.values())
    if len(states) <= MAX_STATES:
        return states
    return set(sorted(states, key=_order)[:MAX_STATES])


def _order(state: PathState) -> tuple[int, str]:
    # paths that know more about their conditions first; then a stable order
    return (-len(state.facts), repr(state))


def forget_locals(state: PathState, scope: str) -> PathState:
    """A function returned: the models local to it (keyed ``scope:name``) are gone, and so is
    the eval mode it left them in (a model loaded and evaluated per call)."""
    prefix = f"{scope}:"
    if not any(key.startswith(prefix) for key, _, _ in state.evaluating):
        return state
    return state.with_evaluating(
        frozenset(entry for entry in state.evaluating if not entry[0].startswith(prefix))
    )
