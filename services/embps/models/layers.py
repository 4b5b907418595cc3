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



class PairwiseDots(nn.Module):
    """The dot product of every pair among n vectors: [B, n, dim] -> [B, n(n-1)/2], pair (i, j) with i > j,
    in the order (1, 0), (2, 0), (2, 1), (3, 0), ... (the strictly lower triangle of each sample's Gram
    matrix, row by row).  The pairs are gathered from the flat Gram matrix with index_select, the same bits
    forward and backward as indexing it on two axes (`gram[:, rows, cols]`), which costs a few times more."""

    flat_pairs: torch.Tensor   # buffer: each pair's position i * n + j in the flat [n, n] Gram matrix

    def __init__(self, n: int):
        super().__init__()
        rows, cols = torch.tril_indices(n, n, offset=-1)
        self.n_pairs = len(rows)
        self.register_buffer("flat_pairs", rows * n + cols, persistent=False)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1).index_select(1, self.flat_pairs)
