"""Wide & Deep (Cheng et al., 2016): a linear model plus an MLP over the same inputs, logits summed."""

from collections.abc import Sequence

import torch
from torch import nn

from embps.models.layers import check_inputs, mlp


class WideDeep(nn.Module):
    """Both parts read x = [embs flattened ‖ dense]. The wide part is one Linear(x) -> 1 (the original
    also feeds it hand-made cross features; here the embedding rows stand in for them), the deep part an
    MLP x -> deep... -> 1."""

    def __init__(self, n_dense: int, n_tables: int, dim: int, deep: Sequence[int] = (256, 128)):
        super().__init__()
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        in_dim = n_tables * dim + n_dense
        self.wide = nn.Linear(in_dim, 1)
        self.deep = mlp(in_dim, [*deep, 1])

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        x = torch.cat([embs.flatten(1), dense], dim=1)
        return (self.wide(x) + self.deep(x)).squeeze(1)
