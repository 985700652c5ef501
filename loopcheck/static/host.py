"""What the expression readers need from the interpreter running them, and their view of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import libcst as cst

    from loopcheck.static.frames import Frame
    from loopcheck.static.index import FileContext
    from loopcheck.static.model import Site


class Host:
    """What a reader needs from the interpreter running it (see ``Interpreter``)."""

    frame: Frame
    discarding: int
    probing: int
    follows: int
    gate: str | None
    at: cst.CSTNode | None  # the statement being run, in the current frame
    grad_enabled: bool
    no_grad_blocks: list[cst.CSTNode]


class HostView:
    """A reader of expressions in the host's current frame."""

    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def frame(self) -> Frame:
        return self.host.frame

    @property
    def ctx(self) -> FileContext:
        return self.host.frame.ctx

    def site(self, node: cst.CSTNode) -> Site:
        return self.host.frame.ctx.site(node)
