"""Caser (Tang & Wang, 2018): convolutional sequence embedding of a user's last L items, scored against
a candidate next item."""

import torch
import torch.nn.functional as F
from torch import nn

from embps.models.layers import check_inputs


class Caser(nn.Module):
    """The embedding rows of a sample are [user, item_1 .. item_L (oldest first), candidate]: n_tables =
    L + 2.  The L history rows form an L x dim "image" E.

    - horizontal: for every height h in 1..L, `horizontal` filters h x dim slide over E (ReLU), each
      max-pooled over its positions -> L * horizontal values (union-level patterns of h items);
    - vertical: `vertical` filters L x 1, each a weighted sum of E's rows -> vertical * dim values
      (point-level patterns);
    - z = ReLU(W [horizontal ‖ vertical] + b), dim wide.

    The paper scores item i as W'_i [z ‖ P_u] + b'_i with a 2*dim-wide output row W'_i per item.  On the
    parameter server every row has the same width `dim`, so here the candidate's row w_i plays W'_i through
    a dense map A: logit = <w_i, A [z ‖ P_u] + a>, i.e. W'_i = w_i A (rank dim) and b'_i = <w_i, a>.
    The dense features are accepted for the common model interface and not read (Caser has none); the
    paper's dropout is left out, as in every model here.
    """

    def __init__(self, n_dense: int, n_tables: int, dim: int, horizontal: int = 16, vertical: int = 4):
        super().__init__()
        if n_tables < 3:
            raise ValueError(f"caser needs n_tables = L + 2 >= 3 (user, L >= 1 history items, candidate), "
                             f"got {n_tables}")
        self.n_dense, self.n_tables, self.dim = n_dense, n_tables, dim
        self.length = n_tables - 2
        self.horizontal = nn.ModuleList(nn.Conv2d(1, horizontal, (h, dim)) for h in range(1, self.length + 1))
        self.vertical = nn.Conv2d(1, vertical, (self.length, 1))
        self.hidden = nn.Linear(horizontal * self.length + vertical * dim, dim)
        self.output = nn.Linear(2 * dim, dim)

    def forward(self, dense: torch.Tensor, embs: torch.Tensor) -> torch.Tensor:
        check_inputs(dense, embs, self.n_dense, self.n_tables, self.dim)
        user, image, candidate = embs[:, 0], embs[:, 1:-1].unsqueeze(1), embs[:, -1]   # image [B, 1, L, dim]
        unions = [F.relu(conv(image)).squeeze(3).amax(dim=2) for conv in self.horizontal]   # each [B, n_h]
        points = self.vertical(image).flatten(1)                                            # [B, n_v * dim]
        z = F.relu(self.hidden(torch.cat([*unions, points], dim=1)))
        return (self.output(torch.cat([z, user], dim=1)) * candidate).sum(dim=1)
