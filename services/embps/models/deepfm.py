"""DeepFM (Guo et al., 2017): first-order term + factorization-machine pairwise term + MLP."""

from collections.abc import Sequence

import torch
from torch import nn

from embps.models.layers import check_inputs, mlp


class DeepFM(nn.Module):
    """logit = first_order(dense) + FM(embs) + deep([embs flattened ‖ dense]).

    FM is the second-order term sum_{i<j} <e_i, e_j> over the n_tables embedding rows, computed as
    0.5 * sum_d((sum_i e_i)^2 - sum_i e_i^2). The first-order term of the original model is a scalar
    weight per categorical id, which would need one more 1-wide table per feature on the parameter
    server; here it is a Linear(n_dense -> 1) over the dense features only (its bias is the global
    bias), so the model needs nothing but the `dim`-wide rows the caller passes in.
    """

    def __init__(self, n_dense: int, n_tables: int, dim: int, deep: Sequence[int] = (256, 128)):
        super().__init__()
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        self.first_order = nn.Linear(n_dense, 1)
        self.deep = mlp(n_tables * dim + n_dense, [*deep, 1])

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        fm = 0.5 * (embs.sum(dim=1).square() - embs.square().sum(dim=1)).sum(dim=1, keepdim=True)
        deep = self.deep(torch.cat([embs.flatten(1), dense], dim=1))
        return (self.first_order(dense) + fm + deep).squeeze(1)
