"""LocalTrainer: its embedding updates against numpy written out by hand, determinism, learning."""

import numpy as np
import pytest
import torch
from torch import nn

from embps.models import LocalTrainer, build_model, evaluate

ROWS, DIM, N_DENSE = (6, 9, 4), 3, 2


class SumModel(nn.Module):
    """logit_b = sum of all embedding entries of sample b + w . dense_b + c: dlogit/dembs = 1 everywhere."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(N_DENSE, 1)

    def forward(self, dense, embs):
        return embs.sum(dim=(1, 2)) + self.lin(dense).squeeze(1)


def make_tables(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.5, (r, DIM)).astype(np.float32) for r in ROWS]


def make_batch(seed, batch=8):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(batch, N_DENSE)).astype(np.float32)
    sparse = np.stack([rng.integers(0, 3, batch) for _ in ROWS], axis=1)  # ids 0..2: many repeats
    labels = rng.integers(0, 2, batch).astype(np.float32)
    return dense, sparse, labels


def sum_model_emb_grads(model, tables, dense, sparse, labels):
    """d(mean BCE)/d(row) in numpy for SumModel, summed over the samples that look the row up."""
    w = model.lin.weight.detach().numpy()[0].astype(np.float64)
    c = float(model.lin.bias.detach())
    z = np.array([sum(tables[t][sparse[b, t]].astype(np.float64).sum() for t in range(len(tables)))
                  for b in range(len(labels))]) + dense.astype(np.float64) @ w + c
    dz = (1 / (1 + np.exp(-z)) - labels) / len(labels)           # dL/dlogit_b
    grads = [np.zeros(t.shape) for t in tables]
    for t in range(len(tables)):
        for b in range(len(labels)):
            grads[t][sparse[b, t]] += dz[b]                       # repeated ids: summed
    return grads


def test_sgd_step_equals_numpy_with_repeated_ids():
    tables = make_tables()
    model = SumModel()
    dense, sparse, labels = make_batch(1)
    assert any(len(np.unique(sparse[:, t])) < len(sparse) for t in range(len(ROWS))), "want repeated ids"
    grads = sum_model_emb_grads(model, tables, dense, sparse, labels)
    trainer = LocalTrainer(model, tables, "sgd", emb_lr=0.3, emb_eps=1e-8, dense_optimizer="sgd", dense_lr=0.1)
    trainer.step(dense, sparse, labels)
    for t in range(len(ROWS)):
        want = tables[t] - 0.3 * grads[t]
        np.testing.assert_allclose(trainer.table(t), want, rtol=1e-6, atol=1e-6)
        untouched = np.setdiff1d(np.arange(ROWS[t]), sparse[:, t])
        assert np.array_equal(trainer.table(t)[untouched], tables[t][untouched])
    assert trainer.table_state(0) is None


def test_adagrad_state_and_rows_follow_torch_formula_over_two_steps():
    tables = make_tables()
    model = SumModel()
    lr, eps = 0.2, 1e-3
    trainer = LocalTrainer(model, tables, "adagrad", emb_lr=lr, emb_eps=eps, dense_optimizer="sgd", dense_lr=0.0)
    w = [t.astype(np.float64) for t in tables]
    s = [np.zeros(t.shape) for t in tables]
    assert all(np.array_equal(trainer.table_state(t), s[t]) for t in range(len(ROWS)))  # initial_accumulator 0
    for step in range(2):
        dense, sparse, labels = make_batch(10 + step)
        grads = sum_model_emb_grads(model, [x.astype(np.float32) for x in w], dense, sparse, labels)
        trainer.step(dense, sparse, labels)
        for t in range(len(ROWS)):
            rows = np.unique(sparse[:, t])
            s[t][rows] += grads[t][rows] ** 2
            w[t][rows] -= lr * grads[t][rows] / (np.sqrt(s[t][rows]) + eps)
            np.testing.assert_allclose(trainer.table_state(t), s[t], rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(trainer.table(t), w[t], rtol=1e-5, atol=1e-6)


def test_dlrm_embedding_update_equals_autograd_rows_summed_in_numpy():
    tables = make_tables()
    model_a = build_model("dlrm", N_DENSE, len(ROWS), DIM, seed=1, bottom=(8,), top=(8,))
    model_b = build_model("dlrm", N_DENSE, len(ROWS), DIM, seed=1, bottom=(8,), top=(8,))
    dense, sparse, labels = make_batch(2)
    embs = torch.stack([torch.from_numpy(tables[t][sparse[:, t]]) for t in range(len(ROWS))], 1).requires_grad_()
    loss = nn.functional.binary_cross_entropy_with_logits(model_b(torch.from_numpy(dense), embs),
                                                           torch.from_numpy(labels))
    loss.backward()
    g = embs.grad.numpy()
    trainer = LocalTrainer(model_a, tables, "sgd", emb_lr=0.5, emb_eps=0.0, dense_optimizer="adam")
    assert trainer.step(dense, sparse, labels) == pytest.approx(loss.item(), rel=1e-6)
    for t in range(len(ROWS)):
        want = tables[t].copy()
        np.add.at(want, sparse[:, t], -0.5 * g[:, t])
        np.testing.assert_allclose(trainer.table(t), want, rtol=1e-5, atol=1e-6)


def test_callers_tables_are_not_modified_and_predict_is_pure():
    tables = make_tables()
    copies = [t.copy() for t in tables]
    trainer = LocalTrainer(build_model("deepfm", N_DENSE, len(ROWS), DIM), tables, "adagrad", 0.1, 1e-8)
    dense, sparse, labels = make_batch(3)
    p1 = trainer.predict(dense, sparse)
    assert p1.shape == (len(labels),) and ((p1 > 0) & (p1 < 1)).all()
    assert np.array_equal(trainer.predict(dense, sparse), p1)
    assert all(np.array_equal(trainer.table(t), tables[t]) for t in range(len(ROWS)))
    trainer.step(dense, sparse, labels)
    assert all(np.array_equal(a, b) for a, b in zip(tables, copies))
    assert not np.array_equal(trainer.predict(dense, sparse), p1)


@pytest.mark.parametrize("name", ["dlrm", "dcn_v2"])
def test_two_runs_are_bit_identical(name):
    def run():
        trainer = LocalTrainer(build_model(name, N_DENSE, len(ROWS), DIM, seed=5), make_tables(), "adagrad", 0.1,
                               1e-8, dense_optimizer="adam", dense_lr=1e-2)
        losses = [trainer.step(*make_batch(s)) for s in range(5)]
        return losses, [trainer.table(t) for t in range(len(ROWS))], [trainer.table_state(t) for t in range(len(ROWS))]

    a, b = run(), run()
    assert a[0] == b[0]
    assert all(np.array_equal(x, y) for x, y in zip(a[1] + a[2], b[1] + b[2]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        LocalTrainer(SumModel(), make_tables(), "rowwise_adagrad", 0.1, 1e-8)
    with pytest.raises(ValueError):
        LocalTrainer(SumModel(), make_tables(), "sgd", 0.1, 1e-8, dense_optimizer="lbfgs")
    with pytest.raises(ValueError):
        LocalTrainer(SumModel(), [np.zeros((3, 2)), np.zeros((3, 4))], "sgd", 0.1, 1e-8)
    trainer = LocalTrainer(SumModel(), make_tables(), "sgd", 0.1, 1e-8)
    dense, sparse, labels = make_batch(0)
    with pytest.raises(ValueError):
        trainer.step(dense, sparse[:, :2], labels)


@pytest.mark.parametrize("name,emb_optimizer", [("dlrm", "adagrad"), ("wide_deep", "sgd"),
                                                ("dcn_v2", "adagrad"), ("deepfm", "sgd")])
def test_learns_a_toy_click_rule(name, emb_optimizer):
    # Click iff table 0's id is even or table 1's id is below 10: learnable only through the embeddings.
    rng = np.random.default_rng(7)
    n_tables, rows, dim, batch = 3, 40, 8, 128

    def batch_of(n):
        sparse = rng.integers(0, rows, (n, n_tables))
        dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
        labels = ((sparse[:, 0] % 2 == 0) | (sparse[:, 1] < 10)).astype(np.float32)
        return dense, sparse, labels

    tables = [rng.normal(0, 0.05, (rows, dim)).astype(np.float32) for _ in range(n_tables)]
    trainer = LocalTrainer(build_model(name, N_DENSE, n_tables, dim, seed=0), tables, emb_optimizer,
                           emb_lr=0.1 if emb_optimizer == "adagrad" else 1.0, emb_eps=1e-8, dense_lr=3e-3)
    test = [batch_of(512)]
    before = evaluate(trainer.predict, test)
    losses = [trainer.step(*batch_of(batch)) for _ in range(150)]
    after = evaluate(trainer.predict, test)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert after["logloss"] < 0.6 * before["logloss"]
    assert after["auc"] > 0.95


def test_threads_argument_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        LocalTrainer(SumModel(), make_tables(), "sgd", 0.1, 1e-8, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
