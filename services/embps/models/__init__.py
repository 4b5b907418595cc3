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
    fgcnn      conv_channels=(6, 8), kernel=7, pool=2, new_maps=(1, 1), deep=(256, 128)
                                                    CNN-generated features + IPNN head (see fgcnn.py)
    caser      horizontal=16, vertical=4            sequence model: embs are [user, L items, candidate]
                                                    (n_tables = L + 2); dense is not read (see caser.py)

A model that reads the columns of `embs` as something other than independent categorical features says
so in INPUT_LAYOUTS; check_model_fits refuses a data set whose rows do not have that layout.

Parameters depend only on (name, shapes, sizes, seed): build_model seeds torch's RNG inside a forked
RNG state, so the caller's global RNG is left as it was. No model has dropout or BatchNorm, so outputs
are a pure function of parameters and inputs (bit for bit on the same machine and thread count).
"""

import torch
from torch import nn

from embps.common.job_config import MODELS
from embps.models.caser import Caser
from embps.models.dcn_v2 import DCNv2
from embps.models.deepfm import DeepFM
from embps.models.dlrm import DLRM
from embps.models.fgcnn import FGCNN
from embps.models.layers import mlp
from embps.models.local_training import LocalTrainer
from embps.models.metrics import auc, evaluate, logloss, ranking_metrics
from embps.models.wide_deep import WideDeep

_CLASSES: dict[str, type[nn.Module]] = {
    "dlrm": DLRM,
    "wide_deep": WideDeep,
    "dcn_v2": DCNv2,
    "deepfm": DeepFM,
    "fgcnn": FGCNN,
    "caser": Caser,
}

# "sequence": sparse columns [user, the L previous items oldest first, candidate item] (a data set with
# DatasetInfo.sequence_length = L); every other model takes any columns.
INPUT_LAYOUTS = {"caser": "sequence"}


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


def check_model_fits(name: str, info) -> None:
    """Raises ValueError when model `name` cannot read the rows of the data set described by `info`
    (a DatasetInfo): a sequence model needs a sequence data set."""
    if INPUT_LAYOUTS.get(name) == "sequence" and not info.sequence_length:
        raise ValueError(f"model {name!r} reads [user, history items, candidate] rows: it needs a sequence "
                         f"data set (movielens-100k-seq), not {info.name}")


__all__ = ["MODELS", "INPUT_LAYOUTS", "build_model", "check_model_fits", "mlp", "LocalTrainer", "evaluate", "auc",
           "logloss", "ranking_metrics", "DLRM", "WideDeep", "DCNv2", "DeepFM", "FGCNN", "Caser"]
