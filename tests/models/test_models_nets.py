"""embps.models: shapes, seeded determinism, gradients into the looked-up rows, the size keywords, formulas."""

import pytest
import torch
from torch import nn

from embps.models import MODELS, build_model, check_model_fits
from embps.models.layers import PairwiseDots

N_DENSE, N_TABLES, DIM, BATCH = 5, 4, 8, 7


def inputs(seed=0, batch=BATCH):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_DENSE, generator=g), torch.randn(batch, N_TABLES, DIM, generator=g)


@pytest.mark.parametrize("name", MODELS)
def test_output_is_one_float32_logit_per_sample(name):
    model = build_model(name, N_DENSE, N_TABLES, DIM)
    out = model(*inputs())
    assert out.shape == (BATCH,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model(*inputs(batch=1)).shape == (1,)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_parameters_and_outputs_bit_for_bit(name):
    rng_before = torch.get_rng_state()
    a = build_model(name, N_DENSE, N_TABLES, DIM, seed=3)
    b = build_model(name, N_DENSE, N_TABLES, DIM, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before), "build_model must leave the global RNG alone"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a(*inputs()), b(*inputs()))
    # ... and also with the global RNG somewhere else
    torch.manual_seed(12345)
    c = build_model(name, N_DENSE, N_TABLES, DIM, seed=3)
    assert all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)
    d = build_model(name, N_DENSE, N_TABLES, DIM, seed=4)
    assert not all(torch.equal(sa[k], d.state_dict()[k]) for k in sa)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_table_and_every_parameter(name):
    model = build_model(name, N_DENSE, N_TABLES, DIM)
    dense, embs = inputs()
    embs.requires_grad_(True)
    model(dense, embs).sum().backward()
    for t in range(N_TABLES):
        assert embs.grad[:, t].abs().sum() > 0, f"no gradient into table {t}"
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_no_dropout_or_batchnorm(name):
    model = build_model(name, N_DENSE, N_TABLES, DIM)
    assert not any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in model.modules())
    model.train()
    out_train = model(*inputs())
    model.eval()
    assert torch.equal(out_train, model(*inputs()))


@pytest.mark.parametrize("name", MODELS)
def test_wrong_input_shapes_are_refused(name):
    model = build_model(name, N_DENSE, N_TABLES, DIM)
    dense, embs = inputs()
    with pytest.raises(ValueError):
        model(dense[:, :-1], embs)
    with pytest.raises(ValueError):
        model(dense, embs[:, :-1])
    with pytest.raises(ValueError):
        model(dense, embs[:-1])


def test_unknown_model_and_unknown_size_keyword():
    with pytest.raises(ValueError):
        build_model("xgboost", N_DENSE, N_TABLES, DIM)
    with pytest.raises(TypeError):
        build_model("dlrm", N_DENSE, N_TABLES, DIM, hidden=(3,))


def test_size_keywords():
    m = build_model("dlrm", N_DENSE, N_TABLES, DIM, bottom=(16,), top=(8,))
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [
        (N_DENSE, 16), (16, DIM), (DIM + (N_TABLES + 1) * N_TABLES // 2, 8), (8, 1)]
    m = build_model("dcn_v2", N_DENSE, N_TABLES, DIM, cross_layers=3, rank=2, deep=(4,))
    assert len(m.cross) == 3 and m.cross[0].v.out_features == 2
    assert m(*inputs()).shape == (BATCH,)
    for name in ("wide_deep", "deepfm"):
        assert build_model(name, N_DENSE, N_TABLES, DIM, deep=(4, 4))(*inputs()).shape == (BATCH,)


def test_default_sizes():
    m = build_model("dlrm", 13, 26, 16)
    assert [l.out_features for l in m.bottom if isinstance(l, nn.Linear)] == [128, 64, 16]
    assert [l.out_features for l in m.top if isinstance(l, nn.Linear)] == [256, 128, 1]
    m = build_model("dcn_v2", 13, 26, 16)
    assert len(m.cross) == 2 and m.cross[0].v.out_features == 8


def test_dlrm_interaction_is_the_pairwise_dots():
    model = build_model("dlrm", N_DENSE, N_TABLES, DIM)
    dense, embs = inputs()
    captured = {}
    model.top.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    model(dense, embs)
    x = model.bottom(dense)
    vecs = torch.cat([x.unsqueeze(1), embs], dim=1)
    want = [x] + [(vecs[:, i] * vecs[:, j]).sum(1, keepdim=True)
                  for i in range(N_TABLES + 1) for j in range(i)]
    torch.testing.assert_close(captured["x"], torch.cat(want, dim=1))


def test_pairwise_dots_and_their_gradient_are_the_gram_matrixs_bit_for_bit():
    n = 6
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(BATCH, n, DIM, generator=g, requires_grad=True)
    rows, cols = torch.tril_indices(n, n, offset=-1)
    want = torch.bmm(vectors, vectors.transpose(1, 2))[:, rows, cols]
    got = PairwiseDots(n)(vectors)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    weights = torch.randn(want.shape, generator=g)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), vectors)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), vectors)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)


def test_deepfm_second_order_term_is_the_sum_over_pairs():
    model = build_model("deepfm", N_DENSE, N_TABLES, DIM)
    with torch.no_grad():  # silence everything but the FM term
        for p in [*model.first_order.parameters(), *model.deep.parameters()]:
            p.zero_()
    dense, embs = inputs()
    want = sum((embs[:, i] * embs[:, j]).sum(1) for i in range(N_TABLES) for j in range(i + 1, N_TABLES))
    torch.testing.assert_close(model(dense, embs), want)


def test_dcn_v2_cross_layer_formula():
    model = build_model("dcn_v2", N_DENSE, N_TABLES, DIM)
    dense, embs = inputs()
    x0 = torch.cat([embs.flatten(1), dense], 1)
    layer = model.cross[0]
    want = x0 * (x0 @ layer.v.weight.T @ layer.u.weight.T + layer.u.bias) + x0
    torch.testing.assert_close(layer(x0, x0), want)


def test_fgcnn_generated_fields_and_head_input():
    # 5 fields (dense + 4 tables) pool to 3, then 2: new_maps (2, 3) make 2*3 + 3*2 new fields
    model = build_model("fgcnn", N_DENSE, N_TABLES, DIM, conv_channels=(3, 4), kernel=3, new_maps=(2, 3), deep=(6,))
    assert [layer.fields_out for layer in model.generation] == [3, 2]
    n_fields = N_TABLES + 1 + 12
    captured = {}
    model.deep.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    dense, embs = inputs()
    model(dense, embs)
    x = captured["x"]
    assert x.shape == (BATCH, n_fields * DIM + n_fields * (n_fields - 1) // 2)
    fields = x[:, :n_fields * DIM].view(BATCH, n_fields, DIM)
    torch.testing.assert_close(fields[:, 0], model.dense_field(dense))
    torch.testing.assert_close(fields[:, 1:N_TABLES + 1], embs)
    maps = fields[:, :N_TABLES + 1].unsqueeze(1)
    pooled = torch.nn.functional.max_pool2d(torch.tanh(model.generation[0].conv(maps)), (2, 1), ceil_mode=True)
    first = torch.tanh(model.generation[0].recombine(pooled.flatten(1))).view(BATCH, 6, DIM)
    torch.testing.assert_close(fields[:, N_TABLES + 1:N_TABLES + 7], first)
    want = [(fields[:, i] * fields[:, j]).sum(1) for i in range(n_fields) for j in range(i)]
    torch.testing.assert_close(x[:, n_fields * DIM:], torch.stack(want, dim=1))
    with pytest.raises(ValueError):
        build_model("fgcnn", N_DENSE, N_TABLES, DIM, conv_channels=(3, 4), new_maps=(1,))


def test_caser_formula_by_hand():
    model = build_model("caser", N_DENSE, N_TABLES, DIM, horizontal=3, vertical=2)
    dense, embs = inputs()
    length = N_TABLES - 2
    user, history, candidate = embs[:, 0], embs[:, 1:-1], embs[:, -1]
    unions = []
    for h, conv in zip(range(1, length + 1), model.horizontal):
        w, b = conv.weight[:, 0], conv.bias                                     # [n_h, h, DIM]
        windows = [torch.relu(torch.einsum("nhd,bhd->bn", w, history[:, s:s + h]) + b) for s in range(length - h + 1)]
        unions.append(torch.stack(windows).amax(0))
    points = torch.einsum("vl,bld->bvd", model.vertical.weight[:, 0, :, 0], history) + model.vertical.bias[:, None]
    z = torch.relu(model.hidden(torch.cat([*unions, points.flatten(1)], dim=1)))
    want = (model.output(torch.cat([z, user], dim=1)) * candidate).sum(1)
    torch.testing.assert_close(model(dense, embs), want)
    # the logit is linear in the candidate's row, and the order of the history matters
    twice = embs.clone()
    twice[:, -1] *= 2
    torch.testing.assert_close(model(dense, twice), 2 * want)
    assert not torch.allclose(model(dense, embs[:, [0, 2, 1, 3]]), want)
    with pytest.raises(ValueError):
        build_model("caser", N_DENSE, 2, DIM)


def test_check_model_fits():
    from embps.datasets import DatasetInfo
    ctr = DatasetInfo("ctr", 3, (5, 5, 5), 10, 10)
    sequences = DatasetInfo("seq", 1, (5, 6, 6, 5), 10, 10, sequence_length=2, eval_candidates=3)
    for name in MODELS:
        check_model_fits(name, sequences)
        if name != "caser":
            check_model_fits(name, ctr)
    with pytest.raises(ValueError, match="sequence"):
        check_model_fits("caser", ctr)
