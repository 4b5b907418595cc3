"""Adam for sparse embedding gradients with a step count per row: the shards' Adam kernel in PyTorch."""

import torch


class RowStepAdam(torch.optim.Optimizer):
    """Adam on the rows a sparse gradient touches, each row with its own step count t[r], as the native
    store's kernel (native/optimizer.c) computes it.  For a row r with summed gradient g in a step:
        t[r] += 1
        m[r] += (1 - beta1) * (g - m[r]);   v[r] = beta2 * v[r] + (1 - beta2) * g * g
        w[r] -= lr / (1 - beta1^t[r]) * m[r] / (sqrt(v[r]) / sqrt(1 - beta2^t[r]) + eps)
    in float32, with both bias corrections computed in float64 and rounded once (as torch.optim.Adam
    does).  Rows the step does not touch keep w, m, v and t.

    This is torch.optim.SparseAdam but for the step count: SparseAdam keeps one count per table, so a
    row untouched for a while gets the bias correction of the table's step, not of its own updates;
    both agree while every row is touched on every step.  The per-row count is what a sharded table
    can keep, a row's state living with the row on its shard and in the caches.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is not None:
                    self._step_rows(weight, weight.grad, group)
        return None

    def _step_rows(self, weight: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        if not grad.is_sparse:
            raise RuntimeError("RowStepAdam takes sparse gradients (nn.Embedding(sparse=True))")
        grad = grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        state = self.state[weight]
        if not state:
            state["exp_avg"] = torch.zeros_like(weight)
            state["exp_avg_sq"] = torch.zeros_like(weight)
            state["step"] = torch.zeros(weight.shape[0], dtype=torch.float32)
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        t = state["step"][rows] + 1
        step_size = (lr / (1 - torch.pow(beta1, t.double()))).float()[:, None]
        bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, t.double())).float()[:, None]
        m = state["exp_avg"][rows]
        m = m + (1 - beta1) * (g - m)
        v = beta2 * state["exp_avg_sq"][rows] + (1 - beta2) * g * g
        state["exp_avg"][rows], state["exp_avg_sq"][rows], state["step"][rows] = m, v, t
        weight[rows] = weight[rows] - step_size * m / (torch.sqrt(v) / bc2_sqrt + eps)

    def row_state(self, weight: torch.Tensor) -> torch.Tensor:
        """[rows, 2 * dim + 1]: m, v and the step count, as the native store lays out a row's state."""
        state = self.state[weight]
        if not state:
            return torch.zeros(weight.shape[0], 2 * weight.shape[1] + 1)
        return torch.cat([state["exp_avg"], state["exp_avg_sq"], state["step"][:, None]], dim=1)
