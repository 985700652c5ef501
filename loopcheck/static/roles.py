"""What a name is: optimizer, scheduler, scaler, model, accelerator, engine — resolved from
imports, constructor calls, assignments and, for parameters, the names real code gives them.

Never from the method called on it: ``env.step()`` is not an optimizer step because ``env`` is
not an optimizer, whatever ``step`` means.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from loopcheck.static.syntax import dotted as _dotted
from loopcheck.static.tree import is_expression, kids

if TYPE_CHECKING:
    from loopcheck.static.classes import ClassInfo


class Role(enum.Enum):
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    SCALER = "scaler"
    MODEL = "model"
    ACCELERATOR = "accelerator"  # Accelerate's Accelerator, Lightning Fabric
    ENGINE = "engine"  # DeepSpeed engine: backward and step (which also clears) on itself
    LIGHTNING = "lightning"  # ``self`` inside a LightningModule
    INSTANCE = "instance"  # an instance of a class defined in a linted file
    FACTORY = "factory"  # a class or factory (``optimizer_cls = torch.optim.AdamW``): ``builds``


@dataclass(frozen=True)
class Obj:
    """A value with a role. ``key`` identifies the object across calls (an optimizer passed to
    a helper keeps its key); ``models`` are the keys of the models whose parameters an
    optimizer was built from; ``cls`` is the class (defined in a linted file) of an instance;
    ``members`` are the keys of the optimizers a container of optimizers holds, when known;
    ``builds`` is the role of what calling a factory returns; ``parts`` are the optimizers a
    dict built here holds by name (``{"actor": Adam(...), "critic": Adam(...)}``), each with
    the models it was built from: their keys (``key["actor"]``) are its members, whatever key
    the dict ends up under."""

    role: Role
    key: str
    models: frozenset[str] = field(default_factory=frozenset)
    cls: ClassInfo | None = None
    members: tuple[str, ...] = ()
    builds: Role | None = None
    parts: tuple[tuple[str, frozenset[str]], ...] = ()

    def __post_init__(self) -> None:
        if self.parts:
            object.__setattr__(self, "members", tuple(part_key(self.key, n) for n, _ in self.parts))

    def part(self, name: object) -> Obj | None:
        """The optimizer held under ``name`` in a dict of named optimizers."""
        for label, models in self.parts:
            if label == name:
                return Obj(Role.OPTIMIZER, part_key(self.key, label), models)
        return None

    def all_parts(self) -> list[Obj]:
        return [p for p in (self.part(label) for label, _ in self.parts) if p is not None]


def part_key(key: str, name: str) -> str:
    return f"{key}[{name!r}]"


def siblings(key: str, other: str) -> bool:
    """Two optimizers of one dict of named optimizers (``opts["actor"]``, ``opts["critic"]``):
    kept apart on purpose, whatever models the linter could tell them by."""
    if not key.endswith("']") or not other.endswith("']"):
        return False
    return key.rsplit("['", 1)[0] == other.rsplit("['", 1)[0]


class Imports:
    """Import aliases of one file: ``nn`` → ``torch.nn``, ``AdamW`` → ``torch.optim.AdamW``."""

    def __init__(self, module: cst.Module) -> None:
        self.aliases: dict[str, str] = {}
        for node in _walk_imports(module):
            if type(node) is cst.Import:
                for alias in node.names:
                    dotted = _dotted(alias.name)
                    if dotted is None:
                        continue
                    if alias.asname is not None and type(alias.asname.name) is cst.Name:
                        self.aliases[alias.asname.name.value] = dotted
                    else:
                        head = dotted.split(".")[0]
                        self.aliases[head] = head
            elif type(node) is cst.ImportFrom and type(node.names) is not cst.ImportStar:
                base = _dotted(node.module) if node.module is not None else ""
                base = "." * len(node.relative) + (base or "")
                for alias in node.names:
                    name = _dotted(alias.name)
                    if name is None:
                        continue
                    local = name
                    if alias.asname is not None and type(alias.asname.name) is cst.Name:
                        local = alias.asname.name.value
                    # ``from . import helpers``: ``.helpers``, the module beside this one
                    joined = f"{base}.{name}" if node.module is not None else base + name
                    self.aliases[local] = joined if base else name

    def qualify(self, expr: cst.BaseExpression) -> str | None:
        """The dotted name of ``expr`` with its first part resolved through the imports."""
        dotted = _dotted(expr)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full


def _walk_imports(module: cst.Module):
    stack: list[cst.CSTNode] = [module]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is cst.Import or kind is cst.ImportFrom:
            yield node
            continue
        if is_expression(node):
            continue
        stack.extend(kids(node))


# --- what a constructor or factory builds ---------------------------------------------------

_OPTIMIZER_CLASS = re.compile(
    r"(?i)^(adam\w*|sgd\w*|rmsprop|adagrad|adadelta|adamax|nadam|radam|lbfgs|lamb|lars|lion"
    r"|adafactor|sam|asam|gsam|muon|sophia\w*|shampoo|novograd|adabelief|adan|lomo|galore\w*"
    r"|fused(adam|lamb|sgd|novograd)\w*|paged\w*|\w*adamw\w*|zeroredundancyoptimizer)$"
)
_OPTIMIZER_MODULES = (
    "torch.optim.",
    "bitsandbytes.optim.",
    "bnb.optim.",
    "apex.optimizers.",
    "torch_optimizer.",
    "timm.optim.",
    "deepspeed.ops.",
    "transformers.optimization.",
)
_NOT_OPTIMIZER = ("lr_scheduler", "swa_utils", "Optimizer")
SCALER_CLASSES = {"GradScaler", "ShardedGradScaler"}  # torch's loss scalers
_ACCELERATORS = {
    "accelerate.Accelerator",
    "accelerate.accelerator.Accelerator",
    "lightning.Fabric",
    "lightning.fabric.Fabric",
    "lightning_fabric.Fabric",
    "pytorch_lightning.lite.LightningLite",
}
_MODEL_WRAPPERS = {
    "compile",
    "DistributedDataParallel",
    "DDP",
    "DataParallel",
    "FullyShardedDataParallel",
    "FSDP",
    "fully_shard",
    "convert_sync_batchnorm",
    "prepare_model",
}
_MODEL_METHODS = {"to", "cuda", "cpu", "half", "float", "bfloat16", "double", "train", "eval"}
_LOSS_CLASS = re.compile(r"(Loss|Criterion|Metric|Accuracy)\w*$")
_NOT_A_MODEL = re.compile(
    r"(?i)(tokenizer|processor|pipeline|scheduler|config|feature_?extractor|dataset|sampler)"
)


_OPTIMIZER_INPUTS = re.compile(
    r"optimi[sz]er_((grouped|named|trainable|decay)_)?(params?|parameters|param_groups|groups?"
    r"|args?|kwargs|config|cfg|state_dict"
    r"|names?)(_|$)"
)

# a callee named for acting on an optimizer, not for making one: ``_optimizer_step``,
# ``optimizer_zero_grad``, ``optimizer_update``
_OPTIMIZER_ACTS = re.compile(r"optimi[sz]er_?(step|zero_grad|update|apply|backward)(_|$)")


def constructed_role(qualname: str) -> Role | None:
    """The role of what calling ``qualname`` returns, judged from the callee's name."""
    last = qualname.rsplit(".", 1)[-1]
    low = last.lower()
    if last in SCALER_CLASSES:
        return Role.SCALER
    if qualname in _ACCELERATORS or last in {"Accelerator", "Fabric"}:
        return Role.ACCELERATOR
    if qualname.startswith("schedulefree.") or low.endswith("schedulefree"):
        # ``schedulefree.AdamWScheduleFree``: an optimizer that needs no LR schedule
        return Role.OPTIMIZER if last[:1].isupper() else None
    if "pipelining" in qualname or last.startswith("Schedule"):
        return None  # a pipeline-parallel schedule (ScheduleGPipe): its step() runs the stage
    if "lr_scheduler." in qualname or "schedul" in low or last == "SWALR":
        return Role.SCHEDULER
    if last in _NOT_OPTIMIZER or _LOSS_CLASS.search(last):
        return None
    if _OPTIMIZER_INPUTS.search(low):
        return None  # ``network.prepare_optimizer_params(...)``: what an optimizer is given
    if _OPTIMIZER_ACTS.search(low):
        return None  # ``grad_norm = self._optimizer_step()``: what acting on one returns
    if "optimizer" in low or _OPTIMIZER_CLASS.match(last):
        return Role.OPTIMIZER
    if any(qualname.startswith(prefix) for prefix in _OPTIMIZER_MODULES) and last[:1].isupper():
        return Role.OPTIMIZER
    if (
        qualname.startswith(("torch.nn.", "torchvision.models.", "timm.models."))
        and last[:1].isupper()
    ):
        return Role.MODEL
    if last == "from_pretrained":
        # ``AutoModel.from_pretrained``, not a tokenizer, processor, config, noise scheduler or
        # diffusers pipeline (whose call runs under no_grad)
        owner = qualname.rsplit(".", 2)[-2] if qualname.count(".") >= 1 else ""
        return None if _NOT_A_MODEL.search(owner) else Role.MODEL
    if last in {"create_model", "build_model", "get_model"}:
        return Role.MODEL
    if qualname.startswith("torchvision.models.") or qualname.startswith("timm.create_model"):
        return Role.MODEL
    return None


def is_model_wrapper(qualname: str) -> bool:
    """``torch.compile(model)``, ``DDP(model)``: the result is the wrapped model."""
    return qualname.rsplit(".", 1)[-1] in _MODEL_WRAPPERS


def builds_engine(qualname: str) -> bool:
    """``deepspeed.initialize(model=model, ...)``: returns (engine, optimizer, _, scheduler)."""
    return qualname.endswith("initialize") and "deepspeed" in qualname


def is_model_method(name: str) -> bool:
    """``model.to(device)`` and friends return the model itself."""
    return name in _MODEL_METHODS


# --- what a parameter or attribute name says it holds -----------------------------------------

_NAME_ROLES: tuple[tuple[re.Pattern[str], Role], ...] = (
    (
        re.compile(r"^(optimi[sz]ers?|optim|opt)([_A-Z0-9]\w*)?$|^\w+_(optimi[sz]ers?|optim|opt)$"),
        Role.OPTIMIZER,
    ),
    (
        re.compile(r"^(lr_)?(scheduler|sched)(_\w+)?$|^\w+_(scheduler|sched)$"),
        Role.SCHEDULER,
    ),
    (re.compile(r"^(grad_)?scaler$|^amp_scaler$"), Role.SCALER),
    (re.compile(r"^(accelerator|fabric)$"), Role.ACCELERATOR),
    (re.compile(r"^(model_engine|ds_engine)$"), Role.ENGINE),
    (
        re.compile(
            r"^(model|net|network|module|generator|discriminator|encoder|decoder|policy"
            r"|actor|critic|classifier|backbone|unet|transformer|gpt)"
            r"([A-Z0-9][A-Za-z0-9]{0,3}|_[A-Za-z0-9]{1,3}|_(ema|without_ddp|module|engine"
            r"|wrapped|unwrapped|raw|orig|base|teacher|student|target|online|ddp|fsdp"
            r"|compiled|copy|[a-z]+_(model|net|network)))?$"
            r"|^\w+_(model|net|network)$|^net[A-Z]\w{0,3}$"
        ),
        Role.MODEL,
    ),
)


# Names that hold settings or pieces of a role, not the role itself: ``opt_args``,
# ``optimizer_config``, ``scheduler_type``, ``model_name``, ``param_optimizer``.
_NOT_A_ROLE = re.compile(
    r"(?i)_(args?|kwargs|kw|kws|config|configs|cfg|conf|params?|parameters|param_groups|groups?"
    r"|cls|class|classes|type|types|name|names|state|states|state_dict|dict|fn|func|factory"
    r"|builder|spec|options|settings|hparams|id|idx|lr|lrs|path|file|dir|kind|mode|init|level"
    r"|steps?|step_size|ckpt|checkpoint|str|list|key|keys|fns|hook|hooks|wrapper|ids"
    r"|out|outs|output|outputs|in|inp|input|inputs|dim|dims|size|loss|losses|logits|pred|preds"
    r"|rate|period|freq|frequency|interval|type|version|cache|dtype|device|lock|locks|mutex"
    r"|queue|queues|start|end|time|times|timer|elapsed|count|counter|meter|m)$"
    # ``param_optimizer = list(model.named_parameters())`` (BERT's examples): parameters
    r"|^(named_)?params?_(optimi[sz]ers?|optim|opt)$"
)


def role_from_name(name: str, annotation: str | None = None) -> Role | None:
    """The role a parameter or attribute name (or its annotation) announces, if any."""
    if annotation:
        last = annotation.rsplit(".", 1)[-1]
        if "Optimizer" in last:
            return Role.OPTIMIZER
        if last in SCALER_CLASSES:
            return Role.SCALER
        if last in {"Accelerator", "Fabric"}:
            return Role.ACCELERATOR
        if "LRScheduler" in last or "Scheduler" in last:
            return Role.SCHEDULER
        if last in {"Module", "LightningModule", "PreTrainedModel"}:
            return Role.MODEL
    if _NOT_A_ROLE.search(name):
        return None
    bare = name.lstrip("_")  # ``self._optim``: a private attribute says the same
    for pattern, role in _NAME_ROLES:
        if pattern.match(bare):
            return role
    return None


_NOT_AN_OPTIMIZER = re.compile(
    r"(?i)(^|_)(env|envs|environment|vec_env|venv|prof|profiler|profilers)$"
)


def steps_no_optimizer(name: str) -> bool:
    """Whether a name holds something whose ``step()`` steps no optimizer and runs no model of
    ours: a reinforcement-learning environment (``self.env``, ``envs``, ``vec_env``) or a
    profiler (``with torch.profiler.profile(...) as prof: ... prof.step()``)."""
    return bool(_NOT_AN_OPTIMIZER.search(name.rpartition(".")[2]))
