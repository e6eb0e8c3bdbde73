"""Merge methods: their algebra on random tensors (hypothesis) and on the real reference checkpoints, API and CLI."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import weight
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_taskvec import TaskVector, merge, merging, method_names
from yolo_taskvec import bn as bn_module
from yolo_taskvec.cli import main
from yolo_taskvec.errors import TaskVecError
from yolo_taskvec.merging import merge_states
from yolo_taskvec.methods import arithmetic, get_method, memory, orthogonalize, sparse
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
    "della": {"density": 1.0},
    "della_linear": {"density": 1.0},
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
    expected = {"task_arithmetic", "average", "slerp", "ties", "dare", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "magnitude_prune", "consensus", "disjoint", "tsv", "iso_c", "iso_cts", "della", "della_linear", "model_stock"}
    assert expected <= set(METHODS)
    for name in METHODS:
        m = get_method(name)
        assert m.doc.strip() and m.paper.strip(), name
        for p in m.params:
            assert p.coerce(p.default, name) == p.default, (name, p.name)
            assert p.choices is None or p.default in p.choices, (name, p.name)


def test_parameters_are_checked():
    with pytest.raises(TaskVecError, match="did you mean density"):
        get_method("ties").resolve({"densty": 0.3})
    with pytest.raises(TaskVecError, match=r"density=1.5 is outside \[0.0, 1.0\]"):
        get_method("ties").resolve({"density": 1.5})
    with pytest.raises(TaskVecError, match="did you mean ties"):
        get_method("tise")
    with pytest.raises(TaskVecError, match=r"rescale='l2' is not one of inverse, l1, none"):
        get_method("dare").resolve({"rescale": "l2"})
    with pytest.raises(TaskVecError, match=r"della: epsilon=0.35 must keep density ± epsilon inside \(0, 1\)"):
        get_method("della").resolve({"density": 0.7, "epsilon": 0.35})
    base, vectors = random_state(0, 3)
    with pytest.raises(TaskVecError, match="slerp needs exactly 2 models, got 3"):
        merge_states(base, vectors, "slerp")
    with pytest.raises(TaskVecError, match="consensus needs at least 2 models, got 1"):
        merge_states(base, vectors[:1], "consensus")


# ----------------------------------------------------------------------------------------------- sparsify + consensus
def ties_reference(deltas, weights, density, *, election="sum", normalize=True):
    """TIES as mergekit writes it, over a stack of all vectors (the streaming implementation must agree)."""
    kept = []
    for d in deltas:
        k = sparse.keep_count(d.numel(), density)
        threshold = d.abs().flatten().sort(descending=True).values[k - 1]
        kept.append(d * (d.abs() >= threshold))
    w = torch.tensor(weights).view(-1, *[1] * deltas[0].dim())
    t = torch.stack(kept) * w
    elected = torch.where((t.sum(0) if election == "sum" else t.sign().sum(0)) >= 0, 1.0, -1.0)
    agree = t.sign() == elected
    den = (w * agree).sum(0)
    den[den == 0] = 1
    return (t * agree).sum(0) / den if normalize else (t * agree).sum(0)


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


# ----------------------------------------------------------------------------------------------- mergekit's options
def quantized(d: torch.Tensor, step: float = 0.02) -> torch.Tensor:
    """Magnitudes on a coarse grid: many ties, as in task vectors of fp16 checkpoints."""
    return (d / step).round() * step


@PROPERTY
@given(stacks(), st.floats(0.05, 1.0), st.integers(1, 40), st.sampled_from(["sum", "count"]), st.booleans())
def test_ties_elections_and_sums_stream_like_the_stacked_reference(stack, density, chunk, election, normalize):
    deltas, weights, _ = stack
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "CHUNK", chunk)
        got = call("ties", deltas, weights, density=density, election=election, normalize=normalize, cutoff="kth_value")
    want = ties_reference(deltas, weights, density, election=election, normalize=normalize)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@PROPERTY
@given(stacks(max_n=1, shapes=[(300,), (20, 30), (6, 4, 3, 3)]), st.floats(0.05, 0.95), st.integers(7, 400))
def test_cutoffs_keep_ties_or_exactly_k_in_argsort_order(stack, density, chunk):
    (d,), _, _ = stack
    d = quantized(d)
    n, k = d.numel(), sparse.keep_count(d.numel(), density)
    mags = d.abs().flatten()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "CHUNK", chunk)  # top_k ties must be placed right across chunks
        kth, top, sampled = (call("magnitude_prune", [d], density=density, cutoff=c).flatten() for c in ("kth_value", "top_k", "sampled"))
    threshold = mags.sort(descending=True).values[k - 1]
    assert torch.equal(kth, d.flatten() * (mags >= threshold))  # every entry tied with the k-th is kept
    reference = torch.zeros(n)
    reference[torch.argsort(mags, descending=True)[:k]] = 1.0  # mergekit's choice among the ties
    assert torch.equal(top, d.flatten() * reference)
    assert torch.equal(sampled, kth)  # small tensors: the sample is the whole tensor
    crumbs = call("breadcrumbs", [d], density=density, gamma=0.1, cutoff="top_k").flatten()
    keep, drop = sparse.keep_count(n, density), int(0.1 * n)
    bottom = max(0, n - keep - drop)
    reference.zero_()[torch.sort(mags).indices[bottom : bottom + keep]] = 1.0
    assert torch.equal(crumbs, d.flatten() * reference)


@pytest.mark.parametrize("key", ["model.7.conv.weight", "model.3.conv.weight", "model.6.cv2.conv.weight", "model.10.cv1.conv.weight"])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_sampled_cutoffs_keep_the_density_on_real_tensors(night_vector, key, density):
    """Above 16384 entries the sampled k-th magnitude is within the sampling error of the exact one (its rank)."""
    d = night_vector.deltas[key].reshape(-1)
    n, k = d.numel(), sparse.keep_count(d.numel(), density)
    (threshold,) = sparse.sampled_thresholds(d, k)
    m = len(range(sparse.sample_stride(n) // 2, n, sparse.sample_stride(n)))
    slack = 5 * math.sqrt(density * (1 - density) / m) * n
    mags = d.abs()
    above, at_or_above = int((mags > threshold).sum()), int((mags >= threshold).sum())
    assert above <= k + slack and at_or_above >= k - slack  # the threshold's rank is k, up to 5 standard deviations
    kept = int((call("magnitude_prune", [night_vector.deltas[key]], density=density) != 0).sum())
    assert kept == int(((mags >= threshold) & (d != 0)).sum())
    assert n > sparse.EXACT and (m >= sparse.MIN_SAMPLE or n < 7 * sparse.MIN_SAMPLE)


@PROPERTY
@given(stacks(max_n=1, shapes=[(500,), (30, 40)]), st.sampled_from(["magnitude_prune", "dare", "breadcrumbs", "della_linear"]), st.integers(0, 100))
def test_l1_rescale_restores_each_vectors_l1_norm(stack, name, seed):
    (d,), _, _ = stack
    params = {"magnitude_prune": {"density": 0.3}, "dare": {"p": 0.7}, "breadcrumbs": {"density": 0.5, "gamma": 0.05}, "della_linear": {"density": 0.3, "epsilon": 0.1}}[name]
    out = call(name, [d], seed=seed, rescale="l1", **params)
    plain = call(name, [d], seed=seed, rescale="none", **params)
    assert torch.equal(out != 0, plain != 0)  # same masks (the random stream is rewound after the norm pass)
    torch.testing.assert_close(out.abs().sum(), d.abs().sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out, plain * (d.abs().sum() / plain.abs().sum()), rtol=1e-5, atol=1e-7)


@PROPERTY
@given(stacks(max_n=1, shapes=[(257,), (16, 40), (8, 5, 3, 3), (12, 1, 3, 3)]), st.floats(0.2, 0.8), st.floats(0.0, 0.19))
def test_della_probabilities_rise_with_magnitude_rank_within_rows(stack, density, epsilon):
    (d,), _, _ = stack
    cols = d[0].numel() if d.dim() >= 2 else d.numel()
    step = sparse.Sparsifier(d.reshape(-1), "della", density=density, p=0, gamma=0, epsilon=epsilon, cutoff="sampled", rescale="inverse", rng=torch.Generator().manual_seed(0), cols=cols)
    probs = step.della_probabilities(d.reshape(-1)).reshape(-1, cols)
    rows = d.reshape(-1, cols).abs()
    order = rows.argsort(dim=1)
    ranked = probs.gather(1, order)
    assert bool((ranked.diff(dim=1) >= 0).all())  # non-decreasing with |τ| in every row
    torch.testing.assert_close(ranked[:, 0], torch.full_like(ranked[:, 0], density - epsilon))
    torch.testing.assert_close(ranked[:, -1], torch.full_like(ranked[:, -1], density + epsilon))
    torch.testing.assert_close(probs.mean(dim=1), torch.full_like(probs[:, 0], density), rtol=1e-5, atol=1e-6)


@PROPERTY
@given(stacks(max_n=1, shapes=[(4000,), (40, 100)]), st.floats(0.2, 0.8), st.floats(0.0, 0.19), st.integers(0, 1000))
def test_della_keeps_at_rate_density_and_rescales_each_entry_by_its_probability(stack, density, epsilon, seed):
    (d,), (w,), _ = stack
    cols = d.shape[1] if d.dim() == 2 else d.numel()
    out = call("della_linear", [d], [w], density=density, epsilon=epsilon, seed=seed)
    step = sparse.Sparsifier(d.reshape(-1), "della", density=density, p=0, gamma=0, epsilon=epsilon, cutoff="sampled", rescale="inverse", rng=torch.Generator().manual_seed(0), cols=cols)
    probs = step.della_probabilities(d.reshape(-1)).reshape(d.shape)
    kept = out != 0
    torch.testing.assert_close(out[kept], d[kept] * w / probs[kept], rtol=1e-6, atol=0)
    assert abs(float(kept.float().mean()) - density) < 5 * math.sqrt(density * (1 - density) / d.numel())


@PROPERTY
@given(stacks(min_n=2, shapes=[(50,), (6, 4, 3, 3), (8, 5)]), st.booleans())
def test_model_stock_ratio_follows_the_angle(stack, filter_wise):
    deltas, weights, _ = stack
    rows = [x.reshape(x.shape[0], -1) if filter_wise and x.dim() >= 2 else x.reshape(1, -1) for x in deltas]
    n = len(deltas)
    cos = torch.stack([torch.nn.functional.cosine_similarity(a, b, dim=1) for i, a in enumerate(rows) for b in rows[i + 1 :]]).mean(0)
    t = (n * cos / (1 + (n - 1) * cos)).unsqueeze(1)
    mean = sum(w * x for w, x in zip(weights, rows)) / sum(weights)
    got = call("model_stock", deltas, weights, filter_wise=filter_wise)
    torch.testing.assert_close(got, (t * mean).reshape(deltas[0].shape), rtol=1e-4, atol=1e-6)
    d = deltas[0]
    torch.testing.assert_close(call("model_stock", [d, d.clone()], filter_wise=filter_wise), d, rtol=1e-6, atol=1e-7)  # parallel: t = 1, the soup
    assert not call("model_stock", [d, -d], filter_wise=filter_wise).any()  # opposite: 1 + cos = 0, the base is kept


def test_model_stock_of_orthogonal_vectors_is_the_base():
    a, b = torch.zeros(10), torch.zeros(10)
    a[:5], b[5:] = 1.0, 2.0
    assert not call("model_stock", [a, b]).any()


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=8, deadline=None)
@given(stack=stacks(min_n=2, max_n=3, shapes=[(33,), (6, 5), (4, 3, 3, 3)]), alpha=st.sampled_from([0.0, 0.3, 1.0, -0.5]), chunk=st.integers(5, 64))
def test_apply_is_the_base_plus_alpha_times_the_merge(name, stack, alpha, chunk):
    deltas, weights, base = stack
    deltas = deltas[:2] if name == "slerp" else deltas
    weights = weights[: len(deltas)]
    method = get_method(name)
    resolved = method.resolve({})
    weights = method.prepare_weights(weights, resolved)
    rngs = lambda: [torch.Generator().manual_seed(5 + i) for i in range(len(deltas))] if method.random else None  # noqa: E731
    before = [d.clone() for d in deltas]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "CHUNK", chunk)
        mp.setattr(arithmetic, "CHUNK", chunk)
        merged = method.fn(list(deltas), list(weights), base=base, rngs=rngs(), **resolved)
        want = torch.add(base, merged, alpha=alpha)  # what the driver does
        got = method.apply(list(deltas), list(weights), base=base, alpha=alpha, rngs=rngs(), **resolved)
    assert torch.equal(got, want), name  # fused methods stream it, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(deltas, before))
    if alpha == 0.0:
        assert torch.equal(got, base)


def test_one_keep_count_for_methods_and_compression():
    from yolo_taskvec import compress

    assert compress.keep_count is sparse.keep_count
    assert [sparse.keep_count(100, f) for f in (0.0, 0.001, 0.015, 0.29, 0.5, 1.0)] == [0, 1, 1, 28, 50, 100]  # int(), as mergekit

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


def varied_state(seed: int, n: int) -> tuple[dict[str, torch.Tensor], list[TaskVector]]:
    """A base with many small tensors of odd and even sizes, one above the driver's group limit and BatchNorm
    statistics, and n vectors over it: one lacks a tensor, one holds an fp16 delta."""
    shapes = [(5, 3, 3, 3), (7,), (16, 8, 1, 1), (3, 3), (33,), (12, 6, 3, 3), (1,), (150, 140)]
    base = {f"layer{i}.weight": randn(shape, seed + i) for i, shape in enumerate(shapes)}
    for i in range(3):
        base[f"layer{i}.bn.running_mean"] = randn((9 + i,), seed + 20 + i)
        base[f"layer{i}.bn.running_var"] = 0.5 + randn((9 + i,), seed + 30 + i).abs()
        base[f"layer{i}.bn.num_batches_tracked"] = torch.tensor(7)
    vectors = []
    for j in range(n):
        deltas = {k: randn(v.shape, seed + 100 * (j + 1) + i, 0.1 * v.abs().mean().item()) for i, (k, v) in enumerate(base.items()) if v.is_floating_point()}
        if j == 1:
            del deltas["layer3.weight"], deltas["layer1.bn.running_var"]
            deltas["layer5.weight"] = deltas["layer5.weight"].half()
        vectors.append(TaskVector(deltas, meta={"name": f"v{j}"}))
    return base, vectors


GROUPED = [
    ("task_arithmetic", {}), ("average", {}), ("ties", {}), ("ties", {"election": "count", "normalize": False, "cutoff": "kth_value"}),
    ("dare", {"p": 0.5}), ("dare", {"p": 0.7, "rescale": "none"}), ("dare_ties", {"p": 0.5}), ("magnitude_prune", {}), ("breadcrumbs", {}), ("breadcrumbs_ties", {}),
]


@pytest.mark.parametrize(("name", "params"), GROUPED)
@pytest.mark.parametrize("bn", ["merge", "mixture"])
def test_small_tensors_merged_together_equal_one_by_one(name, params, bn, monkeypatch):
    """The driver merges small learned tensors (and BatchNorm statistics) in groups: bit for bit as one by one."""
    base, vectors = varied_state(3, 3)
    weights = [1.0, -0.5, 2.0]
    grouped, report = merge_states(base, vectors, name, weights=weights, scale=0.4, params=params, bn=bn, seed=5)
    monkeypatch.setattr(merging, "GROUP_MAX", -1)
    monkeypatch.setattr(bn_module, "GROUP", -1)
    alone, alone_report = merge_states(base, vectors, name, weights=weights, scale=0.4, params=params, bn=bn, seed=5)
    assert_states_equal(grouped, alone)
    assert report.merged == alone_report.merged and report.fresh == alone_report.fresh


def test_random_draws_of_a_group_are_each_tensors_own():
    sizes = [3, 5, 8, 1, 7, 20000]
    together = sparse.draw32(torch.empty(sum(sizes)), [torch.Generator().manual_seed(100 + i) for i in range(len(sizes))], sizes, 0.6)
    alone = [sparse.draw32(torch.empty(n), [torch.Generator().manual_seed(100 + i)], [n], 0.6) for i, n in enumerate(sizes)]
    assert torch.equal(together, torch.cat(alone))
    assert abs(float(together.mean()) - sparse.keep32(0.6)) < 0.02


def test_fresh_outputs_own_their_storage():
    like = torch.empty(0)
    with memory.arena(3 << 20):
        pieces = [memory.empty((n,), like=like) for n in (1 << 16, 1 << 15, 100, 1 << 18)]
    alone = memory.empty((1 << 20,), like=like)  # its own mapping
    for value, t in enumerate([*pieces, alone]):
        t.fill_(value)
    assert [float(t.sum()) for t in pieces + [alone]] == [value * t.numel() for value, t in enumerate([*pieces, alone])]
    assert len({t.untyped_storage().data_ptr() for t in pieces + [alone]}) == 5
    flat = torch.arange(40.0)
    a, b = memory.views(flat, [torch.empty(2, 3, 4), torch.empty(16)])
    assert torch.equal(a, flat[:24].view(2, 3, 4)) and torch.equal(b, flat[24:]) and a.is_contiguous()


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
    assert yolo.ckpt["taskvec"]["recipe"]["method"] == name and yolo.ckpt["taskvec"]["report"]["method"] == name
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
