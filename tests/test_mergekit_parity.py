"""Parity with mergekit 0.1.5's own merge functions on real task vectors.

Every method/parameter combination that has an exact mergekit reference is compared tensor for tensor, through
``Method.apply`` (``base + merged``), with mergekit's ``merge_tensors`` on the same real fine-tunes: base80 and its
fruit-night, raccoon and kangaroo fine-tunes, a few tensors of each kind (1×1 and 3×3 convs, BatchNorm weights, a
bias; small ones and ones above the streaming chunk). Random methods (DARE, DELLA) are compared with the masks made
explicit: mergekit's ``torch.bernoulli`` is handed the masks our generator drew, in the same order, and the keep
probabilities mergekit asked for are checked against ours. mergekit is a test-only dependency (the ``dev`` extra);
without it these tests skip locally and fail in CI.
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import IN_CI, weight

try:
    import mergekit.sparsify as mk_sparsify
    from mergekit.merge_methods.api import merge_tensors
    from mergekit.merge_methods.generalized_task_arithmetic import ConsensusMethod, GeneralizedTaskArithmeticMerge
    from mergekit.sparsify import SparsificationMethod
except ImportError as error:  # the need() convention of conftest: a skip locally, a failure in CI
    message = f"mergekit is not installed ({error}); pip install -e '.[dev]'"
    if IN_CI:
        raise ImportError(message) from error
    pytest.skip(message, allow_module_level=True)

from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.methods import get_method, sparse

FINETUNES = ("yolo26n-fruit-night.pt", "yolo26n-raccoon.pt", "yolo26n-kangaroo.pt")
KEYS = (
    "model.2.cv1.conv.weight",  # (32, 32, 1, 1)
    "model.2.m.0.cv1.conv.weight",  # (8, 16, 3, 3)
    "model.7.conv.weight",  # (256, 128, 3, 3): 294912 entries, several chunks, sampled cut-offs would differ
    "model.2.cv1.bn.weight",  # (32,)
    "model.23.cv2.0.2.bias",  # (4,)
)
WEIGHTS = [1.0, 0.7, 1.3]


@pytest.fixture(scope="module")
def tensors(base_model):
    """key -> (base θ0, [θ1, θ2, θ3]) of the real checkpoints (fp32)."""
    finetunes = [load_model(weight(name)).state for name in FINETUNES]
    out = {key: (base_model.state[key], [f[key] for f in finetunes]) for key in KEYS}
    assert all(t.shape == b.shape and not torch.equal(t, b) for b, ts in out.values() for t in ts)
    return out


def ours(name: str, base: torch.Tensor, thetas: list[torch.Tensor], weights: list[float], seed: int = 0, **params) -> torch.Tensor:
    """Our merged tensor ``base + merge(τ_i)`` (scale 1), the models in the given order."""
    method = get_method(name)
    resolved = method.resolve(params)
    rngs = [torch.Generator().manual_seed(seed + i) for i in range(len(thetas))] if method.random else None
    return method.apply([t - base for t in thetas], method.prepare_weights(list(weights), resolved), base=base, alpha=1.0, rngs=rngs, **resolved)


def assert_same(got: torch.Tensor, ref: torch.Tensor, base: torch.Tensor, thetas: list[torch.Tensor], ulps: float = 4.0) -> None:
    """Equal to float rounding: a few ulps of the magnitudes that are summed into each entry (base, |w_i τ_i|)."""
    scale = ref.abs() + base.abs() + sum(abs(w) * (t - base).abs() for w, t in zip(WEIGHTS, thetas))
    tolerance = ulps * torch.finfo(torch.float32).eps * scale
    bad = (got - ref).abs() > tolerance
    assert not bad.any(), f"{int(bad.sum())} of {ref.numel()} entries differ, max {float((got - ref).abs().max()):.3g}"


def gta(consensus, sparsification, normalize: bool, rescale: bool) -> GeneralizedTaskArithmeticMerge:
    """A mergekit generalized-task-arithmetic method built from its own class (for combinations it registers none of)."""
    return GeneralizedTaskArithmeticMerge(consensus, sparsification, normalize, rescale, "parity", None, None)


# (our method, our params) -> (mergekit method, mergekit params); weights and the base are added below
DETERMINISTIC = [
    (("task_arithmetic", {}), ("task_arithmetic", {})),
    (("ties", {"density": 0.3, "cutoff": "top_k"}), ("ties", {"density": 0.3})),
    (("ties", {"density": 0.3, "cutoff": "top_k", "normalize": False}), ("ties", {"density": 0.3, "normalize": False})),
    (("ties", {"density": 0.3, "cutoff": "top_k", "rescale": "l1"}), ("ties", {"density": 0.3, "rescale": True})),
    (("ties", {"density": 0.3, "cutoff": "top_k", "election": "count"}), (gta(ConsensusMethod.count, SparsificationMethod.magnitude, True, False), {"density": 0.3})),
    (("magnitude_prune", {"density": 0.3, "cutoff": "top_k"}), (gta(None, SparsificationMethod.magnitude, False, False), {"density": 0.3})),
    (("magnitude_prune", {"density": 0.3, "cutoff": "top_k", "normalize": True}), (gta(None, SparsificationMethod.magnitude, False, False), {"density": 0.3, "normalize": True})),
    (("breadcrumbs", {"density": 0.8, "gamma": 0.05, "cutoff": "top_k"}), ("breadcrumbs", {"density": 0.8, "gamma": 0.05})),
    (("breadcrumbs", {"density": 0.8, "gamma": 0.05, "cutoff": "top_k", "rescale": "l1"}), ("breadcrumbs", {"density": 0.8, "gamma": 0.05, "rescale": True})),
    (("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05, "cutoff": "top_k", "normalize": False}), ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05})),
    (("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05, "cutoff": "top_k"}), ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05, "normalize": True})),
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("mine", "theirs"), DETERMINISTIC, ids=lambda case: f"{case[0] if isinstance(case[0], str) else 'gta'}{case[1]}".replace(" ", ""))
def test_deterministic_methods_match_mergekit(tensors, key, mine, theirs):
    base, thetas = tensors[key]
    (name, params), (method, mk_params) = mine, theirs
    got = ours(name, base, thetas, WEIGHTS, **params)
    ref = merge_tensors([base, *thetas], method, parameters={"weight": WEIGHTS, **mk_params}, base_index=0)
    assert_same(got, ref, base, thetas)
    assert not torch.equal(got, base)


@pytest.mark.parametrize("key", KEYS)
def test_soup_slerp_and_model_stock_match_mergekit(tensors, key):
    base, thetas = tensors[key]
    assert_same(ours("average", base, thetas, WEIGHTS), merge_tensors(thetas, "linear", parameters={"weight": WEIGHTS}), base, thetas)
    slerp = merge_tensors(thetas[:2], "slerp", parameters={"t": 0.3}, base_index=0)  # mergekit's slerp: t=0 is its "base"
    assert_same(ours("slerp", base, thetas[:2], [1.0, 1.0], t=0.3), slerp, base, thetas, ulps=64)  # cosines summed in another order
    for models in (thetas[:2], thetas):  # model stock: weights are not mergekit parameters (unit weights)
        ones = [1.0] * len(models)
        assert_same(ours("model_stock", base, models, ones), merge_tensors([base, *models], "model_stock", base_index=0), base, thetas)
        matrices = [t.reshape(t.shape[0], -1) if t.dim() >= 2 else t for t in (base, *models)]  # mergekit's rows: last axis
        row_wise = merge_tensors(matrices, "model_stock", parameters={"filter_wise": True}, base_index=0).reshape(base.shape)
        assert_same(ours("model_stock", base, models, ones, filter_wise=True), row_wise, base, thetas)


# ----------------------------------------------------------------------------------------------- explicit masks
class MaskRecorder:
    """Records the random masks our sparsifiers draw (per model, per pass over its tensor) and replays them to
    mergekit's ``torch.bernoulli`` in the same order, recording the keep probabilities mergekit asked for."""

    def __init__(self, monkeypatch):
        self.passes: dict[int, list[list[torch.Tensor]]] = {}  # id(sparsifier) -> passes -> chunks (model order)
        self.asked: list[torch.Tensor] = []
        self.replayed: list[torch.Tensor] = []
        original = sparse.Sparsifier.mask

        def record(step, chunk, out):
            m = original(step, chunk, out)
            if step.how in ("random", "della"):
                passes = self.passes.setdefault(id(step), [])
                if step.position == chunk.numel():  # the first chunk of a new pass
                    passes.append([])
                passes[-1].append(m.clone())
            return m

        monkeypatch.setattr(sparse.Sparsifier, "mask", record)
        proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
        proxy.bernoulli = self.replay
        monkeypatch.setattr(mk_sparsify, "torch", proxy)

    def masks(self) -> list[torch.Tensor]:
        """Each model's mask of the merge pass; with ``rescale=l1`` a first pass measured the norms: same masks."""
        out = []
        for passes in self.passes.values():
            full = [torch.cat(chunks) for chunks in passes]
            assert all(torch.equal(full[0], f) for f in full[1:])  # the rewound random stream repeats itself
            out.append(full[-1])
        return out

    def replay(self, probs: torch.Tensor) -> torch.Tensor:
        self.asked.append(probs.clone())
        return self.replayed[len(self.asked) - 1].reshape(probs.shape).to(probs.dtype)


RANDOM = [
    (("dare", {"p": 0.6, "rescale": "l1"}), ("dare_linear", {})),
    (("dare", {"p": 0.6, "rescale": "none"}), ("dare_linear", {"rescale": False})),
    (("dare", {"p": 0.6, "rescale": "l1", "normalize": True}), ("dare_linear", {"normalize": True})),
    (("dare_ties", {"p": 0.6, "rescale": "l1", "normalize": False}), ("dare_ties", {})),
    (("dare_ties", {"p": 0.6, "rescale": "l1"}), ("dare_ties", {"normalize": True})),
    (("della", {"density": 0.4, "epsilon": 0.15, "rescale": "l1"}), ("della", {})),
    (("della", {"density": 0.4, "epsilon": 0.15, "rescale": "none", "election": "count"}), (gta(ConsensusMethod.count, SparsificationMethod.della_magprune, True, False), {})),
    (("della_linear", {"density": 0.4, "epsilon": 0.15, "rescale": "l1"}), ("della_linear", {})),
    (("della_linear", {"density": 0.4, "epsilon": 0.15, "rescale": "none"}), ("della_linear", {"rescale": False})),
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(("mine", "theirs"), RANDOM, ids=lambda case: f"{case[0] if isinstance(case[0], str) else 'gta'}{case[1]}".replace(" ", ""))
def test_random_methods_match_mergekit_given_the_same_masks(tensors, key, mine, theirs, monkeypatch):
    base, thetas = tensors[key]
    (name, params), (method, mk_params) = mine, theirs
    recorder = MaskRecorder(monkeypatch)
    got = ours(name, base, thetas, WEIGHTS, seed=11, **params)
    recorder.replayed = recorder.masks()
    assert len(recorder.replayed) == len(thetas)
    density = 1 - params["p"] if "p" in params else params["density"]
    extra = {"epsilon": params["epsilon"]} if "epsilon" in params else {}
    # mergekit ranks DELLA's rows along dim 1: our rows are the (out, in·k·k) matrix, so it gets that view
    view = (lambda t: t.reshape(t.shape[0], -1)) if name.startswith("della") and base.dim() >= 2 else (lambda t: t)
    ref = merge_tensors([view(base), *map(view, thetas)], method, parameters={"weight": WEIGHTS, "density": density, **extra, **mk_params}, base_index=0)
    assert len(recorder.asked) == len(thetas)
    for asked, mask in zip(recorder.asked, recorder.replayed):
        if name.startswith("della"):  # entry for entry in test_della_keep_probabilities_are_mergekits
            assert float(asked.min()) >= density - params["epsilon"] - 1e-6 and float(asked.max()) <= density + params["epsilon"] + 1e-6
        else:
            assert bool((asked == density).all())
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(mask.mean()) - float(asked.mean())) < 5 * (float(asked.mean()) * (1 - float(asked.mean())) / mask.numel()) ** 0.5 + 1e-9
    assert_same(got, ref.reshape(base.shape), base, thetas)


@pytest.mark.parametrize("key", ["model.2.cv1.conv.weight", "model.7.conv.weight", "model.2.cv1.bn.weight"])
def test_della_keep_probabilities_are_mergekits(tensors, key):
    base, thetas = tensors[key]
    delta = thetas[0] - base
    matrix = delta.reshape(delta.shape[0], -1) if delta.dim() >= 2 else delta
    asked = []
    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    proxy.bernoulli = lambda probs: asked.append(probs.clone()) or torch.ones_like(probs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mk_sparsify, "torch", proxy)
        mk_sparsify.della_magprune(matrix, density=0.4, epsilon=0.15)
    cols = matrix.shape[1] if matrix.dim() == 2 else matrix.numel()
    step = sparse.Sparsifier(delta.reshape(-1), "della", density=0.4, p=0, gamma=0, epsilon=0.15, cutoff="sampled", rescale="none", rng=torch.Generator().manual_seed(0), cols=cols)
    mine = torch.cat([step.della_probabilities(delta.reshape(-1)[s : s + sparse.chunk_length(delta.numel(), cols)]).reshape(-1) for s in range(0, delta.numel(), sparse.chunk_length(delta.numel(), cols))])
    assert torch.equal(mine, asked[0].reshape(-1))
