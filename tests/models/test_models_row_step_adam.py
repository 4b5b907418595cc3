"""RowStepAdam, the reference of Adam tables: step for step the native store's kernel (per-row step
counts), and torch.optim.SparseAdam while every row is touched on every step."""

import numpy as np
import torch
from torch import nn

from embps.api import OptimizerKind, OptimizerSpec, TableSpec
from embps.models.local_training import LocalTrainer
from embps.models.row_step_adam import RowStepAdam
from embps.store import apply_optimizer

ROWS, DIM = 7, 4


def sparse_grad(rows: np.ndarray, grads: np.ndarray) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.as_tensor(rows)[None], torch.as_tensor(grads), (ROWS, DIM),
                                   check_invariants=True)


def test_rows_and_state_equal_the_native_kernel_with_rows_skipping_steps():
    rng = np.random.default_rng(3)
    lr, betas, eps = 0.01, (0.8, 0.99), 1e-6
    spec = TableSpec(dim=DIM, capacity=ROWS, optimizer=OptimizerSpec(OptimizerKind.ADAM, lr=lr, eps=eps,
                                                                      beta1=betas[0], beta2=betas[1]))
    rows = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    state = np.zeros((ROWS, 2 * DIM + 1), np.float32)
    weight = nn.Parameter(torch.tensor(rows))
    adam = RowStepAdam([weight], lr=lr, betas=betas, eps=eps)
    steps = np.zeros(ROWS)
    for _ in range(6):
        touched = np.sort(rng.choice(ROWS, 3, replace=False))
        grads = rng.normal(size=(3, DIM)).astype(np.float32)
        steps[touched] += 1
        r, s = rows[touched].copy(), state[touched].copy()
        apply_optimizer(spec, r, s, grads)
        rows[touched], state[touched] = r, s
        weight.grad = sparse_grad(touched, grads)
        adam.step()
    assert len(set(steps)) > 1, "rows have different step counts"
    np.testing.assert_array_equal(adam.row_state(weight)[:, -1].numpy(), steps)
    np.testing.assert_allclose(weight.detach().numpy(), rows, rtol=0, atol=1e-6)
    np.testing.assert_allclose(adam.row_state(weight).numpy(), state, rtol=1e-5, atol=1e-7)


def test_equals_sparse_adam_while_every_row_is_touched_every_step():
    rng = np.random.default_rng(4)
    start = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    ours, torchs = nn.Parameter(torch.tensor(start)), nn.Parameter(torch.tensor(start))
    adam, sparse_adam = RowStepAdam([ours], lr=0.01), torch.optim.SparseAdam([torchs], lr=0.01)
    for _ in range(5):
        grads = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        ours.grad = torchs.grad = sparse_grad(np.arange(ROWS), grads)
        adam.step()
        sparse_adam.step()
    np.testing.assert_allclose(ours.detach().numpy(), torchs.detach().numpy(), rtol=0, atol=1e-6)


def test_local_trainer_reports_adam_state_in_the_stores_layout():
    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)

        def forward(self, dense, embs):
            return embs.sum(dim=(1, 2)) + self.lin(dense).squeeze(1)

    tables = [np.zeros((ROWS, DIM), np.float32)]
    trainer = LocalTrainer(Sum(), tables, "adam", 0.01, 1e-8, dense_optimizer="sgd", dense_lr=0.0)
    trainer.step(np.zeros((2, 1), np.float32), np.array([[1], [1]]), np.ones(2, np.float32))
    state = trainer.table_state(0)
    assert state.shape == (ROWS, 2 * DIM + 1)
    np.testing.assert_array_equal(state[:, -1], [0, 1, 0, 0, 0, 0, 0])   # one step, row 1's only
    assert (trainer.table(0)[1] > 0).all() and not trainer.table(0)[[0, 2]].any()   # label 1: row 1 rises
