"""CTR models whose embedding tables live outside them, on the parameter server.

Every model has the same interface:

    model = build_model(name, n_dense, n_tables, dim, seed=0, **sizes)
    logits = model(dense, embs)     # dense [B, n_dense] float32, embs [B, n_tables, dim] -> logits [B]

`embs` holds the rows looked up by the caller, one id per table per sample. `sizes` are the model's
own layer-size keywords (an unknown one raises TypeError):

    dlrm       bottom=(128, 64), top=(256, 128)     bottom MLP n_dense-128-64-dim, dot interaction, top MLP 256-128-1
    wide_deep  deep=(256, 128)                      Linear + MLP over [embs flattened ‖ dense]
    dcn_v2     cross_layers=2, rank=8, deep=(256, 128)
    deepfm     deep=(256, 128)                      first order over dense only (see deepfm.py)

Parameters depend only on (name, shapes, sizes, seed): build_model seeds torch's RNG inside a forked
RNG state, so the caller's global RNG is left as it was. No model has dropout or BatchNorm, so outputs
are a pure function of parameters and inputs (bit for bit on the same machine and thread count).
"""

import torch
from torch import nn

from embps.models.dcn_v2 import DCNv2
from embps.models.deepfm import DeepFM
from embps.models.dlrm import DLRM
from embps.models.layers import mlp
from embps.models.local_training import LocalTrainer
from embps.models.metrics import auc, evaluate, logloss
from embps.models.wide_deep import WideDeep

MODELS = ("dlrm", "wide_deep", "dcn_v2", "deepfm")

_CLASSES: dict[str, type[nn.Module]] = {
    "dlrm": DLRM,
    "wide_deep": WideDeep,
    "dcn_v2": DCNv2,
    "deepfm": DeepFM,
}


def build_model(name: str, n_dense: int, n_tables: int, dim: int, seed: int = 0, **sizes) -> nn.Module:
    """A freshly initialised float32 model `name` (one of MODELS) with parameters drawn from `seed`."""
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    if min(n_dense, n_tables, dim) < 1:
        raise ValueError(f"n_dense, n_tables and dim must be >= 1, got {n_dense}, {n_tables}, {dim}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _CLASSES[name](n_dense, n_tables, dim, **sizes)
    return model.float()


__all__ = ["MODELS", "build_model", "mlp", "LocalTrainer", "evaluate", "auc", "logloss", "DLRM", "WideDeep", "DCNv2", "DeepFM"]
