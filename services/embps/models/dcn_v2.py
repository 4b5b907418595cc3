"""DCN-v2 (Wang et al., 2021), stacked form: low-rank cross layers, then an MLP."""

from collections.abc import Sequence

import torch
from torch import nn

from embps.models.layers import check_inputs, mlp


class LowRankCross(nn.Module):
    """x_{l+1} = x0 * (U (V x_l) + b) + x_l with V: d -> rank and U: rank -> d (the paper's low-rank
    mixture with a single expert)."""

    def __init__(self, d: int, rank: int):
        super().__init__()
        self.v = nn.Linear(d, rank, bias=False)
        self.u = nn.Linear(rank, d)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.u(self.v(x)) + x


class DCNv2(nn.Module):
    """x0 = [embs flattened ‖ dense] goes through `cross_layers` low-rank cross layers of rank `rank`,
    then the MLP deep... -> 1."""

    def __init__(self, n_dense: int, n_tables: int, dim: int, cross_layers: int = 2, rank: int = 8,
                 deep: Sequence[int] = (256, 128)):
        super().__init__()
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        d = n_tables * dim + n_dense
        self.cross = nn.ModuleList(LowRankCross(d, rank) for _ in range(cross_layers))
        self.deep = mlp(d, [*deep, 1])

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        x0 = torch.cat([embs.flatten(1), dense], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.deep(x).squeeze(1)
