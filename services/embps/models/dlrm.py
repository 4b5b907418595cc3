"""DLRM (Naumov et al., 2019): bottom MLP over dense features, pairwise dot interaction, top MLP."""

from collections.abc import Sequence

import torch
from torch import nn

from embps.models.layers import PairwiseDots, check_inputs, mlp


class DLRM(nn.Module):
    """The bottom MLP maps the dense features to one more `dim`-vector; the dot products of every pair
    among the n_tables + 1 vectors (strictly lower triangle, no self-products), concatenated with that
    vector, feed the top MLP whose last layer gives the logit."""

    def __init__(self, n_dense: int, n_tables: int, dim: int,
                 bottom: Sequence[int] = (128, 64), top: Sequence[int] = (256, 128)):
        super().__init__()
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        self.bottom = mlp(n_dense, [*bottom, dim], last_activation=True)
        self.interaction = PairwiseDots(n_tables + 1)
        self.top = mlp(dim + self.interaction.n_pairs, [*top, 1])

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        x = self.bottom(dense)                                   # [B, dim]
        vectors = torch.cat([x.unsqueeze(1), embs], dim=1)       # [B, n_tables + 1, dim]
        pairs = self.interaction(vectors)                        # [B, (n+1)n/2]
        return self.top(torch.cat([x, pairs], dim=1)).squeeze(1)
