"""Merge methods: their algebra on random tensors (hypothesis) and on the real reference checkpoints, API and CLI."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import weight
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_taskvec import TaskVector, merge, method_names
from yolo_taskvec.cli import main
from yolo_taskvec.errors import TaskVecError
from yolo_taskvec.merging import merge_states
from yolo_taskvec.methods import get_method, orthogonalize, sparse
from yolo_taskvec.methods.masks import disjoint_masks

METHODS = method_names()
SMALL = ["model.2.*", "model.23.cv2.0.*"]  # a few real layers: 1x1 and 3x3 convs, BatchNorm, a biased conv
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [(1,), (7,), (33,), (5, 6), (6, 5), (4, 3, 3, 3), (8, 2, 1, 1)]
# parameters that make each method the identity on one vector at weight 1 (so base + τ is the fine-tune)
IDENTITY = {
    "task_arithmetic": {},
    "average": {},
    "ties": {"density": 1.0},
    "magnitude_prune": {"density": 1.0},
    "dare": {"p": 0.0},
    "dare_ties": {"p": 0.0},
    "breadcrumbs": {"density": 1.0, "gamma": 0.0},
    "breadcrumbs_ties": {"density": 1.0, "gamma": 0.0},
    "disjoint": {},
    "tsv": {"fraction": 1.0},
}


# ----------------------------------------------------------------------------------------------- helpers
def randn(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def call(name: str, deltas, weights=None, *, base=None, seed: int = 0, **params) -> torch.Tensor:
    """A method applied directly to one tensor, as the driver does (weights prepared, one generator per model)."""
    method = get_method(name)
    resolved = method.resolve(params)
    weights = method.prepare_weights(list(weights or [1.0] * len(deltas)), resolved)
    rngs = [torch.Generator().manual_seed(1000 * seed + i) for i in range(len(deltas))] if method.random else None
    base = torch.zeros_like(deltas[0]) if base is None else base
    return method.fn(list(deltas), weights, base=base, rngs=rngs, **resolved)


def n_models(name: str) -> int:
    return 2 if name == "slerp" else 3


@st.composite
def stacks(draw, min_n: int = 1, max_n: int = 4, shapes=SHAPES):
    """(deltas, weights, base): a few random task-vector tensors of one shape, positive weights."""
    shape = draw(st.sampled_from(shapes))
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**20))
    deltas = [randn(shape, seed + i, 0.1) for i in range(n)]
    weights = draw(st.lists(st.floats(0.25, 2.0), min_size=n, max_size=n))
    return deltas, weights, randn(shape, seed + 99)


def random_state(seed: int, n: int) -> tuple[dict[str, torch.Tensor], list[TaskVector]]:
    """A small base state dict (conv, bias, BatchNorm) and n task vectors over it."""
    base = {
        "conv.weight": randn((6, 4, 3, 3), seed),
        "conv.bias": randn((6,), seed + 1),
        "bn.weight": 1 + randn((6,), seed + 2, 0.1),
        "bn.running_mean": randn((6,), seed + 3),
        "bn.running_var": 0.5 + randn((6,), seed + 4).abs(),
        "bn.num_batches_tracked": torch.tensor(100),
    }
    vectors = []
    for i in range(n):
        s = seed + 10 * (i + 1)
        deltas = {k: randn(v.shape, s + j, 0.1) for j, (k, v) in enumerate(base.items()) if v.is_floating_point()}
        tuned_var = 0.5 + randn((6,), s + 7).abs()  # the tuned model's variance is a variance too
        deltas["bn.running_var"] = tuned_var - base["bn.running_var"]
        vectors.append(TaskVector(deltas, meta={"name": f"v{i}"}))
    return base, vectors


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------------- registry
def test_registry_documents_every_method():
    expected = {"task_arithmetic", "average", "slerp", "ties", "dare", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "magnitude_prune", "consensus", "disjoint", "tsv", "iso_c", "iso_cts"}
    assert expected <= set(METHODS)
    for name in METHODS:
        m = get_method(name)
        assert m.doc.strip() and m.paper.strip(), name
        for p in m.params:
            assert p.coerce(p.default, name) == p.default, (name, p.name)


def test_parameters_are_checked():
    with pytest.raises(TaskVecError, match="did you mean density"):
        get_method("ties").resolve({"densty": 0.3})
    with pytest.raises(TaskVecError, match=r"density=1.5 is outside \[0.0, 1.0\]"):
        get_method("ties").resolve({"density": 1.5})
    with pytest.raises(TaskVecError, match="did you mean ties"):
        get_method("tise")
    base, vectors = random_state(0, 3)
    with pytest.raises(TaskVecError, match="slerp needs exactly 2 models, got 3"):
        merge_states(base, vectors, "slerp")
    with pytest.raises(TaskVecError, match="consensus needs at least 2 models, got 1"):
        merge_states(base, vectors[:1], "consensus")


# ----------------------------------------------------------------------------------------------- sparsify + consensus
def ties_reference(deltas, weights, density):
    """TIES as mergekit writes it, over a stack of all vectors (the streaming implementation must agree)."""
    kept = []
    for d in deltas:
        k = sparse.keep_count(d.numel(), density)
        threshold = d.abs().flatten().sort(descending=True).values[k - 1]
        kept.append(d * (d.abs() >= threshold))
    w = torch.tensor(weights).view(-1, *[1] * deltas[0].dim())
    t = torch.stack(kept) * w
    elected = torch.where(t.sum(0) >= 0, 1.0, -1.0)
    agree = t.sign() == elected
    den = (w * agree).sum(0)
    den[den == 0] = 1
    return (t * agree).sum(0) / den


@PROPERTY
@given(stacks(), st.floats(0.05, 1.0), st.integers(1, 40))
def test_ties_streams_like_the_stacked_reference(stack, density, chunk):
    deltas, weights, _ = stack
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "CHUNK", chunk)  # several chunks per tensor
        got = call("ties", deltas, weights, density=density)
    torch.testing.assert_close(got, ties_reference(deltas, weights, density), rtol=1e-5, atol=1e-7)


@PROPERTY
@given(stacks(max_n=1))
def test_one_vector_identity_settings_equal_task_arithmetic(stack):
    deltas, _, base = stack
    for name, params in IDENTITY.items():
        if name == "tsv":
            continue
        assert torch.equal(call(name, deltas, base=base, **params), deltas[0]), name


@PROPERTY
@given(stacks())
def test_dare_without_drop_and_ties_at_full_density_reduce_to_sums_and_means(stack):
    deltas, weights, _ = stack
    ta = call("task_arithmetic", deltas, weights)
    assert torch.equal(call("dare", deltas, weights, p=0.0), ta)
    assert torch.equal(call("magnitude_prune", deltas, weights, density=1.0), ta)
    assert torch.equal(call("breadcrumbs", deltas, weights, density=1.0, gamma=0.0), ta)
    # TIES at full density is the disjoint mean of the sign-agreeing entries; with one sign everywhere, the mean
    same_sign = [d.abs() for d in deltas]
    torch.testing.assert_close(call("ties", same_sign, weights, density=1.0), call("average", same_sign, weights), rtol=1e-5, atol=1e-7)


@PROPERTY
@given(stacks(max_n=1, shapes=[(40,), (9, 11), (5, 4, 3, 3)]), st.floats(0.05, 1.0))
def test_magnitude_prune_keeps_exactly_the_largest(stack, density):
    (d,), _, _ = stack
    out = call("magnitude_prune", [d], density=density)
    k = sparse.keep_count(d.numel(), density)
    kept = out != 0
    assert int(kept.sum()) == k
    dropped = d.abs()[~kept]
    assert dropped.numel() == 0 or float(d.abs()[kept].min()) >= float(dropped.max())
    assert torch.equal(out[kept], d[kept])


@PROPERTY
@given(stacks(max_n=1, shapes=[(200,), (20, 30)]), st.floats(0.0, 1.0), st.floats(0.0, 0.2))
def test_breadcrumbs_drop_the_largest_and_the_smallest(stack, density, gamma):
    (d,), _, _ = stack
    out = call("breadcrumbs", [d], density=density, gamma=gamma)
    n, order = d.numel(), d.abs().flatten().argsort(descending=True)
    keep = sparse.keep_count(n, density)
    top = min(int(gamma * n), n - keep)  # density + gamma > 1: fewer outliers go (as mergekit)
    kept = (out != 0).flatten()
    assert not kept[order[:top]].any()
    assert kept[order[top : top + keep]].all()
    assert int(kept.sum()) == keep


@PROPERTY
@given(stacks(max_n=1, shapes=[(4000,), (50, 80)]), st.floats(0.1, 0.9), st.integers(0, 1000))
def test_dare_drops_at_rate_p_and_rescales(stack, p, seed):
    (d,), (w,), _ = stack
    out = call("dare", [d], [w], p=p, seed=seed)
    kept = out != 0
    torch.testing.assert_close(out[kept], d[kept] * w / (1 - p), rtol=1e-6, atol=0)
    rate, n = float(kept.float().mean()), d.numel()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("name", ["dare", "dare_ties"])
def test_seeds_reproduce_random_methods_exactly(name):
    deltas = [randn((3000,), i, 0.1) for i in range(3)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "CHUNK", 512)
        a, b, c = (call(name, deltas, seed=s, p=0.5) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------------------------- masks
@PROPERTY
@given(stacks(max_n=5))
def test_disjoint_masks_never_overlap(stack):
    deltas, weights, _ = stack
    masks = disjoint_masks(deltas, weights)
    coverage = torch.stack(masks).sum(0)
    assert int(coverage.max()) == 1 and int(coverage.min()) == 1  # every entry goes to exactly one vector
    out = call("disjoint", deltas, weights)
    assert torch.equal(out, sum(m * (d * w) for m, d, w in zip(masks, deltas, weights)))
    assert torch.equal(out.abs(), torch.stack([(d * w).abs() for d, w in zip(deltas, weights)]).amax(0))


@PROPERTY
@given(stacks(min_n=2), st.floats(0.0, 2.0))
def test_consensus_keeps_task_arithmetic_where_enough_tasks_agree(stack, lam):
    deltas, weights, _ = stack
    ta = call("task_arithmetic", deltas, weights)
    assert torch.equal(call("consensus", deltas, weights, k=0, lam=lam), ta)
    out = call("consensus", deltas, weights, k=2, lam=lam)
    assert torch.equal(out[out != 0], ta[out != 0])
    votes = sum((d * w).abs() > lam * (ta - d * w).abs() for d, w in zip(deltas, weights))
    assert torch.equal(out != 0, (votes >= 2) & (ta != 0))
    assert not call("consensus", deltas, weights, k=len(deltas) + 1, lam=lam).any()


# ----------------------------------------------------------------------------------------------- spectral
@PROPERTY
@given(stacks(shapes=[(1,), (9,), (64,)]))
def test_spectral_methods_are_task_arithmetic_on_1d_tensors(stack):
    deltas, weights, _ = stack
    ta = call("task_arithmetic", deltas, weights)
    for name in ("tsv", "iso_c", "iso_cts"):
        assert torch.equal(call(name, deltas, weights), ta), name


@PROPERTY
@given(stacks(shapes=[(5, 6), (12, 7), (8, 4, 3, 3), (16, 3, 1, 1)]))
def test_isotropic_merges_have_flat_spectra(stack):
    deltas, weights, _ = stack
    for name in ("iso_c", "iso_cts"):
        out = call(name, deltas, weights)
        s = torch.linalg.svdvals(out.reshape(out.shape[0], -1))
        assert float(s.max() - s.min()) <= 1e-4 * float(s.mean()), name
    total = call("task_arithmetic", deltas, weights)
    mean_sv = torch.linalg.svdvals(total.reshape(total.shape[0], -1)).mean()
    torch.testing.assert_close(torch.linalg.svdvals(call("iso_c", deltas, weights).reshape(total.shape[0], -1)).mean(), mean_sv, rtol=1e-4, atol=1e-6)


@PROPERTY
@given(stacks(shapes=[(12, 10), (16, 4, 3, 3)]))
def test_tsv_keeps_rank_r_over_t_per_task(stack):
    deltas, weights, _ = stack
    (d,) = deltas[:1]
    torch.testing.assert_close(call("tsv", [d], fraction=1.0), d, rtol=1e-4, atol=1e-5)  # full rank, one task: τ
    out = call("tsv", deltas, weights).reshape(d.shape[0], -1)
    k = max(1, int(min(out.shape) / len(deltas)))
    s = torch.linalg.svdvals(out)
    assert int((s > 1e-5 * s.max()).sum()) <= min(min(out.shape), k * len(deltas))


# ----------------------------------------------------------------------------------------------- slerp
@PROPERTY
@given(st.integers(0, 2**20), st.floats(0.0, 1.0), st.sampled_from([(50,), (6, 4, 3, 3)]))
def test_slerp_interpolates_on_the_sphere(seed, t, shape):
    base = randn(shape, seed, 0.01)
    ta, tb = randn(shape, seed + 1), randn(shape, seed + 2)
    tb = tb * ((base + ta).norm() / (base + tb).norm()) + base * ((base + ta).norm() / (base + tb).norm() - 1)  # |θ_b| = |θ_a|
    out = call("slerp", [ta, tb], base=base, t=t)
    torch.testing.assert_close((base + out).norm(), (base + ta).norm(), rtol=1e-4, atol=0)  # stays on the sphere
    torch.testing.assert_close(call("slerp", [ta, tb], base=base, t=0.0), ta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call("slerp", [ta, tb], base=base, t=1.0), tb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call("slerp", [ta, 2 * ta], base=torch.zeros(shape), t=t), ta * (1 + t), rtol=1e-6, atol=1e-7)  # colinear: lerp


# ----------------------------------------------------------------------------------------------- orthogonalize
@PROPERTY
@given(stacks(min_n=1, max_n=4, shapes=[(40,), (6, 4, 3, 3)]))
def test_orthogonalize_removes_the_span_of_the_others(stack):
    deltas, _, _ = stack
    before = [d.clone() for d in deltas]
    out = orthogonalize(deltas)
    assert all(torch.equal(a, b) for a, b in zip(deltas, before))  # inputs untouched
    if len(deltas) == 1:
        assert torch.equal(out[0], deltas[0])
    for i, o in enumerate(out):
        for j, d in enumerate(deltas):
            if i != j:
                assert abs(float(torch.dot(o.flatten(), d.flatten()))) <= 1e-4 * float(deltas[i].norm() * d.norm())


def test_orthogonalize_option_cancels_a_repeated_vector():
    base, (v, _) = random_state(3, 2)
    twin = TaskVector({k: t.clone() for k, t in v.deltas.items()}, meta={"name": "twin"})
    merged, _ = merge_states(base, [v, twin], "task_arithmetic", orthogonalize=True, bn="base")
    for key in ("conv.weight", "conv.bias", "bn.weight"):  # each vector lies in the other's span: nothing is left
        torch.testing.assert_close(merged[key], base[key], rtol=0, atol=1e-6)
    plain, _ = merge_states(base, [v, twin], "task_arithmetic", bn="base")
    assert not torch.equal(plain["conv.weight"], base["conv.weight"])


# ----------------------------------------------------------------------------------------------- driver properties
@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 1.0))
def test_driver_properties_on_random_states(name, seed, scale):
    n = n_models(name)
    base, vectors = random_state(seed, n)
    weights = [1.0 + 0.25 * i for i in range(n)]
    snapshot = [{k: t.clone() for k, t in v.deltas.items()} for v in vectors]
    zero, _ = merge_states(base, vectors, name, weights=weights, scale=0.0)
    assert_states_equal(zero, base)  # scale 0 is the base exactly
    order = list(reversed(range(n)))
    params = {"t": 0.3} if name == "slerp" else {}
    a, _ = merge_states(base, vectors, name, weights=weights, scale=scale, bn="geometric", seed=seed, params=params)
    swapped = {"t": 0.7} if name == "slerp" else {}  # slerp's t refers to the models as given
    b, _ = merge_states(base, [vectors[i] for i in order], name, weights=[weights[i] for i in order], scale=scale, bn="geometric", seed=seed, params=swapped)
    assert_states_equal(a, b)  # the order of the models does not matter
    assert bool((a["bn.running_var"] > 0).all())
    for v, before in zip(vectors, snapshot):  # inputs untouched
        assert all(torch.equal(v.deltas[k], t) for k, t in before.items())


@PROPERTY
@given(st.integers(0, 2**16), st.floats(-3.0, 3.0), st.sampled_from(["task_arithmetic", "ties", "slerp", "dare"]))
def test_merged_running_var_stays_positive(seed, scale, name):
    base, vectors = random_state(seed, 2)
    geometric, _ = merge_states(base, vectors, name, scale=scale, bn="geometric")
    assert bool((geometric["bn.running_var"] > 0).all())  # log-space interpolation: positive for any scale
    try:
        merged, _ = merge_states(base, vectors, name, scale=scale, bn="merge")
    except TaskVecError as e:
        assert "non-positive" in str(e)
    else:
        assert bool((merged["bn.running_var"] > 0).all())


def test_statistics_follow_each_methods_coefficients():
    base, (a, b) = random_state(7, 2)
    key = "bn.running_mean"
    da, db = a.deltas[key], b.deltas[key]
    expected = {
        "task_arithmetic": base[key] + da + db,  # sums: statistics summed
        "ties": base[key] + (da + db) / 2,  # disjoint mean: statistics averaged
        "disjoint": base[key] + (da + db) / 2,
        "slerp": base[key] + 0.75 * da + 0.25 * db,  # t = 0.25 toward the second model as given
    }
    for name, want in expected.items():
        state, _ = merge_states(base, [a, b], name, bn="geometric", params={"t": 0.25} if name == "slerp" else {})
        torch.testing.assert_close(state[key], want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- real checkpoints
@pytest.fixture(scope="module")
def raccoon_body(base_model):
    """A second real fine-tune of base80 (raccoon, nc=1) without its re-initialised class branch."""
    return TaskVector.from_models(base_model, weight("yolo26n-raccoon.pt"), parts=["backbone", "neck", "head.box"], name="raccoon-body")


@pytest.fixture(scope="module")
def real_pair(night_vector, raccoon_body):
    """The two real vectors restricted to a few layers (fast algebra checks)."""
    return [night_vector.select(SMALL), raccoon_body.select(SMALL)]


@pytest.mark.parametrize("name", METHODS)
def test_real_scale_zero_is_the_base_and_order_does_not_matter(name, base_model, real_pair):
    params = {"t": 0.3} if name == "slerp" else {}
    zero, _ = merge_states(base_model.state, real_pair, name, scale=0.0, params=params)
    assert_states_equal(zero, base_model.state)
    a, _ = merge_states(base_model.state, real_pair, name, scale=0.5, params=params, seed=3)
    b, _ = merge_states(base_model.state, real_pair[::-1], name, scale=0.5, params={"t": 0.7} if name == "slerp" else {}, seed=3)
    assert_states_equal(a, b)
    changed = [k for k in real_pair[0].deltas if not torch.equal(a[k], base_model.state[k])]
    assert changed, f"{name} changed nothing"


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_real_one_vector_at_scale_one_is_the_finetune(name, base_model, night_model, night_vector):
    vector = night_vector.select(SMALL) if name == "tsv" else night_vector  # tsv: a few layers (SVDs are slow)
    merged, _ = merge_states(base_model.state, [vector], name, scale=1.0, params=IDENTITY[name])
    tol = {"rtol": 1e-4, "atol": 1e-4} if name == "tsv" else {"rtol": 1e-6, "atol": 1e-6}  # tsv: SVD round-off
    for key in vector.deltas:
        torch.testing.assert_close(merged[key], night_model.state[key], **tol, msg=key)
    assert len(vector.deltas) == len(night_vector.deltas) or name == "tsv"
    if name in ("ties", "dare", "magnitude_prune"):  # exactly task arithmetic, bit for bit
        ta, _ = merge_states(base_model.state, [night_vector], "task_arithmetic", scale=1.0)
        assert_states_equal(merged, ta)


def test_real_dare_seeds(base_model, real_pair):
    a, _ = merge_states(base_model.state, real_pair, "dare", params={"p": 0.5}, seed=1, scale=0.5)
    b, _ = merge_states(base_model.state, real_pair, "dare", params={"p": 0.5}, seed=1, scale=0.5)
    c, _ = merge_states(base_model.state, real_pair, "dare", params={"p": 0.5}, seed=2, scale=0.5)
    assert_states_equal(a, b)
    assert not torch.equal(a["model.2.cv2.conv.weight"], c["model.2.cv2.conv.weight"])


def test_real_negation_refuses_nonpositive_variances(base_model, night_vector):
    with pytest.raises(TaskVecError, match="non-positive"):
        merge_states(base_model.state, [night_vector], "task_arithmetic", scale=-1.0, bn="merge")
    state, _ = merge_states(base_model.state, [night_vector], "task_arithmetic", scale=-1.0, bn="geometric")
    assert all(bool((state[k] > 0).all()) for k in state if k.endswith("running_var"))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_from_the_api(name, base_model, night_vector, raccoon_body):
    params = {"t": 0.5} if name == "slerp" else {}
    yolo = merge(base_model, [night_vector, raccoon_body], method=name, scale=0.5, classes="base", **params)
    state = yolo.model.state_dict()
    assert yolo.ckpt["taskvec"]["method"] == name
    assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
    assert all(bool((t > 0).all()) for k, t in state.items() if k.endswith("running_var"))
    assert not torch.equal(state["model.2.cv2.conv.weight"].float(), base_model.state["model.2.cv2.conv.weight"])


@pytest.fixture(scope="module")
def vector_files(tmp_path_factory, night_vector, raccoon_body):
    folder = tmp_path_factory.mktemp("vectors")
    night_vector.save(folder / "night.safetensors")
    raccoon_body.save(folder / "raccoon-body.safetensors")
    return folder


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_from_the_cli(name, base_pt, vector_files, tmp_path, capsys):
    out = tmp_path / f"{name}.pt"
    models = f"models={vector_files / 'night.safetensors'},{vector_files / 'raccoon-body.safetensors'}"
    argv = ["merge", f"base={base_pt}", models, f"method={name}", "scale=0.5", "classes=base", "parts=head.box", f"out={out}"]
    assert main(argv) == 0  # the box branch only: the full-model math is checked through the API above
    assert out.is_file()
    assert f"method {name}" in capsys.readouterr().out


def test_cli_method_parameters_and_orthogonalize_match_the_api(base_pt, base_model, vector_files, night_vector, raccoon_body, tmp_path, capsys):
    from ultralytics import YOLO

    out = tmp_path / "ties.pt"
    models = f"models={vector_files / 'night.safetensors'},{vector_files / 'raccoon-body.safetensors'}"
    argv = ["merge", f"base={base_pt}", models, "method=ties", "density=0.3", "orthogonalize=true", "scale=0.5", "classes=base", f"out={out}"]
    assert main(argv) == 0
    api = merge(base_model, [night_vector, raccoon_body], method="ties", density=0.3, orthogonalize=True, scale=0.5, classes="base")
    saved = YOLO(out).model.state_dict()
    for key, value in api.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(saved[key].float(), value.half().float(), rtol=0, atol=0, msg=key)
    plain = merge_states(base_model.state, [night_vector, raccoon_body], "ties", params={"density": 0.3}, scale=0.5)[0]
    assert not torch.equal(api.model.state_dict()["model.2.cv2.conv.weight"], plain["model.2.cv2.conv.weight"])
    assert main(["merge", f"base={base_pt}", models, "method=ties", "densty=0.3", "classes=base", f"out={tmp_path / 'x.pt'}"]) == 2
    assert "did you mean density" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
