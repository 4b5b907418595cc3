"""Bagpipe's emb_optim / emb_optim_params become the table's optimizer: SGD, Adagrad and Adam with
torch's defaults and options; whatever the shards cannot compute exactly is refused by name; and the
spec a class maps to trains a row as that torch optimizer does."""

import numpy as np
import pytest
import torch

from embps.api import OptimizerKind, OptimizerSpec, TableSpec
from embps.api.specs import state_floats
from embps.compat.bagpipe_optim import UnsupportedOptimizer, describe, optimizer_spec, same_optimizer
from embps.store import apply_optimizer


@pytest.mark.parametrize("cls, params, expected", [
    (torch.optim.SGD, {"lr": 0.01}, OptimizerSpec("sgd", lr=0.01)),
    (torch.optim.SGD, None, OptimizerSpec("sgd", lr=1e-3)),                        # torch's default lr
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0, "foreach": True}, OptimizerSpec("sgd", lr=0.1)),
    (torch.optim.Adagrad, {"lr": 0.05}, OptimizerSpec("adagrad", lr=0.05, eps=1e-10)),
    (torch.optim.Adagrad, {"eps": 1e-8, "initial_accumulator_value": 0}, OptimizerSpec("adagrad", lr=0.01, eps=1e-8)),
    (torch.optim.Adam, {"lr": 0.002, "betas": (0.8, 0.99)}, OptimizerSpec("adam", lr=0.002, eps=1e-8, beta1=0.8,
                                                                          beta2=0.99)),
    (torch.optim.SparseAdam, {}, OptimizerSpec("adam", lr=1e-3, eps=1e-8)),
])
def test_torch_optimizers_map_onto_the_table_optimizer(cls, params, expected):
    spec = optimizer_spec(cls, params)
    assert same_optimizer(spec, expected), (spec, expected)


@pytest.mark.parametrize("cls, params, message", [
    (torch.optim.RMSprop, {}, "emb_optim RMSprop: the shards train embeddings with torch.optim.SGD"),
    (torch.optim.SGD, {"momentum": 0.9}, "momentum=0.9: the shards' sgd has no momentum; only 0"),
    (torch.optim.SGD, {"nesterov": True}, "nesterov=True"),
    (torch.optim.Adagrad, {"lr_decay": 0.1}, "lr_decay=0.1: the shards' adagrad has no lr_decay"),
    (torch.optim.Adagrad, {"initial_accumulator_value": 0.1}, "initial_accumulator_value=0.1"),
    (torch.optim.Adam, {"amsgrad": True}, "amsgrad=True"),
    (torch.optim.Adam, {"weight_decay": 0.01}, "weight_decay=0.01"),
    (torch.optim.SGD, {"betas": (0.9, 0.99)}, "'betas': torch.optim.SGD takes no such option"),
    (torch.optim.SGD, {"params": []}, "do not pass model parameters"),
])
def test_what_the_shards_cannot_compute_is_refused_by_name(cls, params, message):
    with pytest.raises(UnsupportedOptimizer) as refused:
        optimizer_spec(cls, params)
    assert message in str(refused.value)


def test_a_subclass_is_refused_since_it_may_compute_otherwise():
    class MySGD(torch.optim.SGD):
        pass
    with pytest.raises(UnsupportedOptimizer, match="MySGD"):
        optimizer_spec(MySGD, {"lr": 0.1})


@pytest.mark.parametrize("cls, params", [(torch.optim.SGD, {"lr": 0.1}), (torch.optim.Adagrad, {"lr": 0.1}),
                                         (torch.optim.SparseAdam, {"lr": 0.01}), (torch.optim.Adam, {"lr": 0.01})])
def test_the_mapped_spec_trains_a_row_as_the_torch_optimizer(cls, params):
    """Three steps of the shards' kernel against torch on the rows a sparse gradient touches."""
    rng = np.random.default_rng(0)
    spec = TableSpec(dim=4, capacity=16, optimizer=optimizer_spec(cls, params))
    start = rng.normal(size=(1, 4)).astype(np.float32)
    grads = rng.normal(size=(3, 1, 4)).astype(np.float32)
    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = cls([weight], **params)
    rows, state = start.copy(), np.zeros((1, state_floats(spec.optimizer.kind, spec.dim)), np.float32)
    for g in grads:
        weight.grad = torch.from_numpy(g).to_sparse() if cls is torch.optim.SparseAdam else torch.from_numpy(g)
        optimizer.step()
        apply_optimizer(spec, rows, state, g)
    np.testing.assert_allclose(rows, weight.detach().numpy(), atol=1e-6, rtol=0)


def test_describe_names_what_the_kind_uses():
    assert describe(OptimizerSpec("sgd", lr=0.01)) == "sgd(lr=0.01)"
    assert describe(OptimizerSpec(OptimizerKind.ADAGRAD, lr=0.05, eps=1e-8)) == "adagrad(lr=0.05, eps=1e-08)"
    assert not same_optimizer(OptimizerSpec("sgd", lr=0.01), OptimizerSpec("sgd", lr=0.02))
    assert same_optimizer(OptimizerSpec("sgd", lr=0.01, eps=1), OptimizerSpec("sgd", lr=0.01, eps=2))
