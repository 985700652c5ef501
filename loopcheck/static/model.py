"""The file model: what the static observer learned about one file, for the rules to query.

Built once per file by :func:`loopcheck.static.analysis.analyze`; rules never walk the syntax
tree, they ask this model:
which protocol violations were seen on which paths, what each loop contains, and what each
entry point (the module body, every function) did as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libcst as cst

from loopcheck.diagnostic import Span
from loopcheck.protocol import Move


class Site:
    """Where a move happened: a syntax node of some linted file, with its span and a short
    rendering of it for messages computed only when asked (most sites are never reported)."""

    __slots__ = ("_node", "_locate", "_render", "_order", "path")

    def __init__(
        self,
        node: cst.CSTNode,
        locate: Callable[[cst.CSTNode], Span],
        render: Callable[[cst.CSTNode], str],
        order: Callable[[cst.CSTNode], int],
        path: str,
    ) -> None:
        self._node = node
        self._locate = locate
        self._render = render
        self._order = order
        self.path = path

    @property
    def node(self) -> cst.CSTNode:
        return self._node

    @property
    def span(self) -> Span:
        return self._locate(self._node)

    def precedes(self, other: Site) -> bool:
        """Whether this site starts before ``other`` in the same file (no positions needed)."""
        return self.path == other.path and self._order(self._node) < other._order(other._node)

    @property
    def text(self) -> str:
        text = self._render(self._node).strip().splitlines()[0]
        return text if len(text) <= 60 else text[:57] + "..."

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Site) and other._node is self._node

    def __hash__(self) -> int:
        return id(self._node)


@dataclass(eq=False)
class LoopSummary:
    """Everything seen inside one loop (inner loops and followed calls included), over every
    path and every analysis of the loop."""

    node: cst.CSTNode
    site: Site
    parent: LoopSummary | None
    root: RootSummary | None  # the analysis that first entered it
    moves: set[tuple[Move, str]] = field(default_factory=set)
    steps: dict[str, Site] = field(default_factory=dict)
    backwards: list[Site] = field(default_factory=list)
    forward: bool = False
    loss_assigned: bool = False
    clears_by_name: bool = False  # something that looks like clearing on an unresolved receiver
    opaque_model: bool = False  # a call we cannot see into received the model
    # ... one that may train it (not ``disable_running_stats(model)``, ``log(model)``)
    opaque_training: bool = False
    grads_read: bool = False  # gradients read or rewritten by hand
    grads_inspected: bool = False  # gradients only inspected (``p.grad is None``, a norm)
    # gradients changed by hand: written (``p.grad = g``), changed in place (``zero_``,
    # ``add_``, ``copy_``) or handed to a collective (``all_reduce(p.grad)``); a read alone
    # (a norm for the log) is ``grads_read`` only
    grads_rewritten: bool = False
    rewrite_facts: set[frozenset] = field(default_factory=set)  # the paths of those rewrites
    # the paths of the updates no key names here (an unresolved ``.step()``, a ``.grad`` read)
    unkeyed_facts: set[frozenset] = field(default_factory=set)
    forward_keys: set[str] = field(default_factory=set)  # the models run forward in the loop
    # the models of each optimizer stepped in the loop, where its parameters are known
    step_models: dict[str, frozenset[str]] = field(default_factory=dict)
    flushes: bool = False  # a step guard also steps on the last batch (no partial window left)
    autograd: bool = False  # gradients taken with torch.autograd.grad (MAML, penalties)
    eval_like: bool = False  # in a function that evaluates (named so, or calling .eval())
    # when eval-like only because it was entered with models in eval mode: those models, and
    # whether one of them runs in it (torchrl's rollout, entered with an env's transforms in
    # eval mode, runs only the policy: no evaluation)
    eval_models: frozenset[str] | None = None
    eval_model_ran: bool = False
    closure_evaluations: bool = False  # an L-BFGS ``step(closure)``: evaluations, not batches
    # each model forward seen in the loop: where, with gradients on, the entry point it was
    # analysed from, and whether through a call from that entry point (the caller's context)
    forwards: list[tuple[Site, bool, RootSummary | None, bool]] = field(default_factory=list)
    sites: set[Site] = field(default_factory=set)  # every move's site seen inside the loop
    # the branch facts of each path on which an optimizer was stepped, cleared or handed to
    # unseen code (which may have done either)
    move_facts: dict[tuple[Move, str], set[frozenset]] = field(default_factory=dict)
    # the optimizers cleared on some path not decided by a counter's residue (a clear under
    # ``if (i + 1) % n == 0:`` alone runs every n-th iteration, not every one)
    unguarded_clears: set[str] = field(default_factory=set)
    unguarded_steps: set[str] = field(default_factory=set)  # ... stepped so (every iteration)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def has(self, move: Move, key: str) -> bool:
        return (move, key) in self.moves

    def has_any(self, move: Move) -> bool:
        return any(m is move for m, _ in self.moves)

    def runs_forward(self, key: str) -> bool:
        """Whether a model the optimizer ``key`` updates is known and runs forward in the loop
        (then which backward calls reach that optimizer is known too)."""
        models = self.step_models.get(key)
        return bool(models) and overlap(models, frozenset(self.forward_keys))

    def steps_apart_from_opaque(self, key: str) -> bool:
        """Whether every path on which this optimizer is stepped excludes, by a run-long
        choice, every path on which it is handed to code we cannot see (the fp32 branch's
        ``optimizer.step()`` beside the AMP branch's ``loss_scaler(loss, optimizer)``)."""
        steps = self.move_facts.get((Move.STEP, key), set())
        opaque = self.move_facts.get((Move.OPAQUE, key), set())
        return bool(steps) and bool(opaque) and all(apart({path}, opaque) for path in steps)

    def updates_model(self, model: str) -> bool:
        """Whether an optimizer stepped in the loop is known to update this model."""
        return any(overlap(models, frozenset({model})) for models in self.step_models.values())

    def clears_periodically(self, key: str) -> bool:
        """Whether every clear of this optimizer in the loop runs only on some residues of a
        counter (``if (i + 1) % n_critic == 0:``) while a step of it runs on any iteration,
        and nothing else may clear it."""
        return (
            self.has(Move.ZERO, key)
            and key not in self.unguarded_clears
            and key in self.unguarded_steps
            and not self.has(Move.OPAQUE, key)
            and not self.clears_by_name
            and not self.grads_rewritten
        )

    def clears(self, key: str) -> bool:
        """Whether anything in the loop may clear (or rewrite) this optimizer's gradients."""
        return (
            self.clears_by_name
            or self.has(Move.ZERO, key)
            or self.has(Move.OPAQUE, key)
            or self.grads_rewritten
        )


@dataclass(eq=False)
class RootSummary:
    """One entry point of the analysis: the module body or a function analysed on its own."""

    name: str
    # called elsewhere (its file, or maybe another linted file): callers decide. Asked only
    # by rules about to report, as a question: whether another file names it reads them all.
    referenced_by: Callable[[], bool] = field(default=lambda: False, repr=False)
    # a method of a model class (``predict_step`` of an ``nn.Module``): an inference API whose
    # callers choose whether gradients are on
    model_api: bool = False
    unit_test: bool = False  # a unit test or one of its helpers (it compares what comes out)
    stepped: bool = False  # some STEP, opaque optimizer call or unresolved .step() was seen
    stepped_unkeyed: bool = False  # an unresolved .step(), or gradients used by hand
    opaque_stepped: bool = False  # an optimizer handed to code we cannot see
    unkeyed_outside: bool = False  # ... one of them outside every loop
    grads_written: bool = False  # gradients written by hand (``p.grad = g``) somewhere in it
    # optimizers stepped, or handed to code we cannot see (STEP and OPAQUE events)
    stepped_keys: set[str] = field(default_factory=set)
    step_sites: set[tuple[str, Site]] = field(default_factory=set)  # each optimizer's steps
    # each backward inside a loop: its site, the outermost loop, an optimizer in its scope
    backwards_in_loops: list[tuple[Site, LoopSummary, bool]] = field(default_factory=list)
    # each backward inside a loop certainly bound to an optimizer: (its site, the optimizer)
    # to the outermost loop (None: an optimizer not known by its parameters), how many
    # optimizers the backward feeds, whether the optimizer was cleared right before it, and
    # whether this code owns its updates (no sibling method or base class may step it)
    bound_backwards: dict[tuple[Site, str], tuple[LoopSummary | None, int, bool, bool]] = field(
        default_factory=dict
    )
    # (backward, optimizer): the gradients that backward wrote for that optimizer were
    # cleared before any step used them (a GAN's discriminator loss reaching the generator)
    dropped: set[tuple[Site, str]] = field(default_factory=set)
    # the branch facts of the paths each backward in a loop was seen on
    backward_facts: dict[Site, set[frozenset]] = field(default_factory=dict)
    _referenced: bool | None = field(default=None, init=False, repr=False)

    def steps_siblings(self, key: str) -> bool:
        """Whether this analysis steps another optimizer the instance holding ``key`` holds
        (an RL trainer's ``train_from_torch`` stepping its Q-function and policy optimizers):
        it owns the updates of the instance's optimizers, whatever its base class does."""
        owner, dot, _ = key.rpartition(":")[2].partition(".")
        if not dot or not owner[:1].isupper():
            return False  # not ``Class.attribute``: no instance holds it
        return any(k != key and k.startswith(f"{owner}.") for k in self.stepped_keys)

    @property
    def referenced(self) -> bool:
        if self._referenced is None:
            self._referenced = self.referenced_by()
        return self._referenced


@dataclass(frozen=True)
class Record:
    """A protocol violation seen on some path: its code, the blamed site, the optimizer and the
    innermost loop the violation was completed in."""

    code: str
    site: Site
    key: str
    loop: LoopSummary | None
    root: RootSummary | None = None
    cause: Site | None = None  # the earlier move the violation concerns, if any
    # LC503: the model is a parameter of the function analysed (its callers say what it is)
    handed_in: bool = False
    # LC108: the next backward is another loss of the same pass (LC102's when it stands)
    between_losses: bool = False
    # LC204: the guard steps on the wrong branch, not after the wrong micro-batch
    inverted: bool = False


class FileModel:
    """What rules may ask about one file."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        # forwards with gradients on of a model put in eval mode earlier in the iteration:
        # (the forward, the eval() call, the innermost loop, the analysis)
        self.eval_forwards: list[tuple[Site, Site, LoopSummary, RootSummary | None]] = []
        self._paths: dict[tuple, set[frozenset]] = {}  # the branch facts of each record's paths
        self.loops: list[LoopSummary] = []
        self.roots: list[RootSummary] = []
        self._seen: set[tuple[str, Site, str, int]] = set()
        # steps (inside a loop) found right after a clear that dropped nothing, with no
        # backward between, each with its loop; and the steps found with gradients to apply
        self.cleared_steps: dict[Site, LoopSummary] = {}
        self.fed_steps: set[Site] = set()

    def steps_only_cleared(self) -> Iterator[tuple[Site, LoopSummary]]:
        """The steps that, on every path seen, apply gradients just cleared: no backward
        between the clear and the step, none confirming later (LC104)."""
        placed = {r.site for r in self.records if r.code in ("LC102", "LC103", "LC104")}
        for site, loop in self.cleared_steps.items():
            if site not in self.fed_steps and site not in placed:
                yield site, loop

    def add_record(self, record: Record, facts: frozenset = frozenset()) -> None:
        key = (record.code, record.site, record.key, id(record.root))
        if key not in self._seen:
            self._seen.add(key)
            self.records.append(record)
        self._paths.setdefault(key, set()).add(facts)

    def violations(self, code: str) -> Iterator[Record]:
        return (r for r in self.records if r.code == code)

    def innermost_loop(self, site: Site) -> LoopSummary | None:
        """The deepest loop in which ``site`` was seen."""
        holding = [loop for loop in self.loops if site in loop.sites]
        return max(holding, key=lambda loop: loop.depth, default=None)

    def reaches(self, site: Site, loop: LoopSummary) -> bool:
        """Whether a move at ``site`` can act on what ``loop`` leaves: it is in the loop, in a
        loop around it, or outside every loop (not in a loop beside it)."""
        if site in loop.sites:
            return True
        holding = [other for other in self.loops if other.root is loop.root and site in other.sites]
        holder = max(holding, key=lambda other: other.depth, default=None)
        outer = loop.parent
        while outer is not None and outer is not holder:
            outer = outer.parent
        return holder is None or outer is holder

    def steps_elsewhere(self, root: RootSummary, loop: LoopSummary) -> bool:
        """Whether every step ``root`` was seen to take is in a loop beside ``loop`` (nanoGPT's
        bench: a profiling loop that never steps, next to the timing loop that does), and no
        unseen code was handed an optimizer or the loop's model."""
        if root.opaque_stepped or root.stepped_unkeyed or loop.opaque_model:
            return False  # (unseen code handed the model may step for it)
        return not any(self.reaches(site, loop) for _, site in root.step_sites)

    def apart_from_steps(self, root: RootSummary, loop: LoopSummary, site: Site) -> bool:
        """Whether every path a backward was seen on excludes, by a run-long choice, every
        path on which its loop steps (or hands an optimizer to unseen code): the fp32 branch
        that lost its step beside the AMP branch's ``scaler.step``."""
        steps = [facts for (move, _), facts in loop.move_facts.items() if move is not Move.ZERO]
        others = set().union(*steps) if steps else set()
        if loop.grads_read or root.stepped_unkeyed:
            # updates by hand, or unresolved steps: only where their paths are known and all
            # in this loop (the loss scaler's norm read on the AMP branch)
            if root.unkeyed_outside or not loop.unkeyed_facts:
                return False
            others |= loop.unkeyed_facts
        paths = root.backward_facts.get(site, set())
        return bool(paths) and all(apart({path}, others) for path in paths)

    def apart_from_rewrites(self, record: Record) -> bool:
        """Whether some path the violation was seen on excludes, by a branch decided on it,
        every path on which its loop rewrote gradients by hand."""
        loop = record.loop
        return loop is not None and self._apart(record, loop.rewrite_facts)

    def apart_from(self, record: Record, *moves: Move) -> bool:
        """Whether some path the violation was seen on excludes, by a branch decided on it,
        every path on which its loop made one of ``moves`` to its optimizer (the fp32 branch
        of ``if use_amp: loss_scaler(loss, optimizer) else: loss.backward()`` is apart from
        the scaler's unseen code)."""
        loop = record.loop
        if loop is None:
            return False
        others = set().union(*(loop.move_facts.get((m, record.key), set()) for m in moves))
        return self._apart(record, others)

    def _apart(self, record: Record, others: set[frozenset]) -> bool:
        key = (record.code, record.site, record.key, id(record.root))
        return apart(self._paths.get(key, set()), others)


def apart(paths: set[frozenset], others: set[frozenset]) -> bool:
    """Whether some of ``paths`` excludes each of ``others`` by a branch decided on both."""
    if not others or frozenset() in others:
        return False
    return any(all(contradict(path, other) for other in others) for path in paths)


def contradict(one: frozenset, other: frozenset) -> bool:
    """Two sets of branch facts that cannot hold on one path (a condition true on one, false
    on the other)."""
    decided = dict(one)
    return any(text in decided and decided[text] != value for text, value in other)


def overlap(ours: frozenset[str], theirs: frozenset[str]) -> bool:
    """Whether two sets of model keys share a module: the same key, a submodule and its
    parent (``train:model.encoder`` and ``train:model``), or a module's ``self`` and any of
    its attributes (``LitGAN.self`` and ``LitGAN.generator``)."""
    if ours & theirs:
        return True
    for a in ours:
        for b in theirs:
            if a.startswith(b + ".") or b.startswith(a + "."):
                return True
            if a.endswith(".self") and b.startswith(a[: -len("self")]):
                return True
            if b.endswith(".self") and a.startswith(b[: -len("self")]):
                return True
    return False
