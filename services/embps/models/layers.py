"""Building blocks shared by the CTR models."""

from collections.abc import Sequence

import torch
from torch import nn


def mlp(in_dim: int, sizes: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Linear layers in_dim -> sizes[0] -> ... -> sizes[-1] with a ReLU between them.

    last_activation=True also puts a ReLU after the last layer (DLRM's bottom MLP does this). There is
    no dropout or BatchNorm anywhere in embps.models, so a forward pass has no randomness at all.
    """
    layers: list[nn.Module] = []
    for i, out_dim in enumerate(sizes):
        layers.append(nn.Linear(in_dim, out_dim))
        if i < len(sizes) - 1 or last_activation:
            layers.append(nn.ReLU())
        in_dim = out_dim
    return nn.Sequential(*layers)


def check_inputs(dense: torch.Tensor, embs: torch.Tensor, n_dense: int, n_tables: int, dim: int) -> None:
    """Raises ValueError when dense is not [B, n_dense] or embs is not [B, n_tables, dim]."""
    if dense.dim() != 2 or dense.shape[1] != n_dense:
        raise ValueError(f"dense must be [B, {n_dense}], got {list(dense.shape)}")
    if embs.dim() != 3 or tuple(embs.shape[1:]) != (n_tables, dim) or embs.shape[0] != dense.shape[0]:
        raise ValueError(f"embs must be [{dense.shape[0]}, {n_tables}, {dim}], got {list(embs.shape)}")
