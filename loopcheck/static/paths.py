"""Path states: the protocol state of every optimizer on one path through the code, the branch
facts decided on it, and how sets of paths are joined and kept bounded."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from loopcheck.protocol import UNKNOWN, OptState

MAX_STATES = 96


@dataclass(frozen=True)
class PathState:
    """The protocol state of every optimizer on one path, plus the branch facts decided on it."""

    opts: tuple[tuple[str, OptState], ...] = ()
    facts: frozenset[tuple[str, bool]] = frozenset()
    # the optimizers cleared by the latest run of consecutive clears (a ``reset_grad()``
    # helper clears several): a backward right after them feeds them
    last_zeroed: frozenset[str] = frozenset()

    def get(self, key: str) -> OptState:
        for k, s in self.opts:
            if k == key:
                return s
        return UNKNOWN

    def with_opt(self, key: str, state: OptState) -> PathState:
        opts = tuple((k, s) for k, s in self.opts if k != key) + ((key, state),)
        return replace(self, opts=tuple(sorted(opts, key=lambda item: item[0])))

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


def cap(states: set[PathState]) -> set[PathState]:
    """Keep the number of paths bounded: first join paths whose protocol states agree (keeping
    the branch facts they share), then forget facts, then keep a stable subset."""
    if len(states) <= MAX_STATES:
        return states
    joined: dict[tuple[object, ...], PathState] = {}
    for state in states:
        key = (state.opts, state.last_zeroed)
        other = joined.get(key)
        joined[key] = state if other is None else replace(other, facts=other.facts & state.facts)
    states = set(joined.values())
    if len(states) <= MAX_STATES:
        return states
    states = {replace(s, facts=frozenset()) for s in states}
    if len(states) <= MAX_STATES:
        return states
    return set(sorted(states, key=repr)[:MAX_STATES])
