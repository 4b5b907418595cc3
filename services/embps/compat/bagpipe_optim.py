"""Bagpipe's `emb_optim` / `emb_optim_params` (a torch.optim class and its options) as the optimizer of
the table that the shards and the gateways' caches train with (embps.api.OptimizerSpec).

Bagpipe steps a torch optimizer over the rows cached on its trainers; here the rows' optimizer runs
where the rows are (the gateways' caches and the shards, the same C kernel), so the class and options
must be ones that kernel computes exactly: SGD(lr), Adagrad(lr, eps) and Adam(lr, betas, eps).  Adam
keeps a step count per row, advanced only by the row's own updates (embps.models.row_step_adam): it is
torch.optim.SparseAdam (what an Adam user of Bagpipe's sparse cache would pass; Adam maps to it too)
but for SparseAdam's one count per table, so the two agree while every row is updated on every step,
and a row updated less often gets the bias correction of its own updates.  Options
that change the arithmetic are refused unless they have their no-op value; options that only choose
how torch computes (foreach, fused, ...) have no meaning here and are accepted.  Defaults are torch's own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

from embps.api import OptimizerKind, OptimizerSpec

# Options that change the arithmetic, accepted at their no-op value only.
NO_OP_VALUES = {"momentum": 0, "dampening": 0, "nesterov": False, "weight_decay": 0, "lr_decay": 0,
                "initial_accumulator_value": 0, "amsgrad": False, "maximize": False,
                "decoupled_weight_decay": False}
# Options that say how torch computes, not what: no meaning here.
IMPLEMENTATION_OPTIONS = frozenset({"foreach", "fused", "differentiable", "capturable"})
# The options each kind takes into its spec.
SPEC_OPTIONS = {OptimizerKind.SGD: ("lr",), OptimizerKind.ADAGRAD: ("lr", "eps"),
                OptimizerKind.ADAM: ("lr", "betas", "eps")}


class UnsupportedOptimizer(ValueError):
    pass


def _kinds() -> dict[type, OptimizerKind]:
    import torch
    return {torch.optim.SGD: OptimizerKind.SGD, torch.optim.Adagrad: OptimizerKind.ADAGRAD,
            torch.optim.Adam: OptimizerKind.ADAM, torch.optim.SparseAdam: OptimizerKind.ADAM}


def optimizer_spec(emb_optim: type, emb_optim_params: Mapping | None = None) -> OptimizerSpec:
    """The table optimizer that trains as emb_optim(rows, **emb_optim_params) would; raises
    UnsupportedOptimizer naming the class or option it cannot honour."""
    kinds = _kinds()
    if emb_optim not in kinds:
        name = getattr(emb_optim, "__qualname__", repr(emb_optim))
        raise UnsupportedOptimizer(
            f"emb_optim {name}: the shards train embeddings with torch.optim.SGD, Adagrad, Adam or SparseAdam "
            "(the class itself, not an instance or a subclass)")
    kind, params = kinds[emb_optim], dict(emb_optim_params or {})
    if "params" in params:
        raise UnsupportedOptimizer("emb_optim_params: do not pass model parameters; the rows are the cache's")
    defaults = {name: p.default for name, p in inspect.signature(emb_optim).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for name, value in params.items():
        if name not in defaults:
            raise UnsupportedOptimizer(f"emb_optim_params {name!r}: torch.optim.{emb_optim.__name__} takes no such "
                                       f"option (it takes {sorted(defaults)})")
        if name in NO_OP_VALUES and value != NO_OP_VALUES[name]:
            raise UnsupportedOptimizer(
                f"emb_optim_params {name}={value!r}: the shards' {kind.value} has no {name}; only "
                f"{NO_OP_VALUES[name]!r} (torch's default) is supported")
    values = {**defaults, **params}
    spec: dict = {"lr": float(values["lr"])}
    if "eps" in SPEC_OPTIONS[kind]:
        spec["eps"] = float(values["eps"])
    if "betas" in SPEC_OPTIONS[kind]:
        spec["beta1"], spec["beta2"] = (float(b) for b in values["betas"])
    return OptimizerSpec(kind, **spec)


def same_optimizer(a: OptimizerSpec, b: OptimizerSpec) -> bool:
    """Whether a and b train alike: the same kind, and the same value of every option that kind uses."""
    fields = {"lr": ("lr",), "eps": ("eps",), "betas": ("beta1", "beta2")}
    return a.kind == b.kind and all(math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-12)
                                    for option in SPEC_OPTIONS.get(a.kind, ()) for f in fields[option])


def describe(spec: OptimizerSpec) -> str:
    """An optimizer spec as a call, with the options its kind uses: "sgd(lr=0.01)"."""
    values = {"lr": f"lr={spec.lr:g}", "eps": f"eps={spec.eps:g}", "betas": f"betas=({spec.beta1:g}, {spec.beta2:g})"}
    return f"{spec.kind.value}({', '.join(values[o] for o in SPEC_OPTIONS.get(spec.kind, ('lr',)))})"
