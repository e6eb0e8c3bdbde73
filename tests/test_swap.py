"""Hot-swapping on a loaded YOLO: predictions while swapped equal apply's, unswap restores the base bit for bit."""

from __future__ import annotations

import pytest
import torch
from conftest import DATASETS

from yolo_taskvec import TaskVector, merge
from yolo_taskvec.errors import MismatchError, TaskVecError
from yolo_taskvec.swap import current, release, state_of, swap, swapped, unswap

IMGSZ = 320


@pytest.fixture(scope="module")
def images():
    folder = DATASETS / "fruit80-night" / "images" / "val"
    files = sorted(folder.iterdir())[:4]
    assert len(files) == 4
    return [str(f) for f in files]


def predictions(model, images) -> list[torch.Tensor]:
    return [r.boxes.data.clone() for r in model.predict(images, imgsz=IMGSZ, verbose=False, device="cpu")]


def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(base_pt, night_vector, images):
    """Base predictions from a fresh YOLO, and those of ``tv.apply(base, 0.5)`` (a separate model)."""
    from ultralytics import YOLO

    base = predictions(YOLO(base_pt), images)
    applied = predictions(night_vector.apply(base_pt, scale=0.5), images)
    assert not identical(base, applied)  # the vector changes the detections, so the checks below can fail
    return {"base": base, "applied": applied}


@pytest.fixture
def model(base_pt):
    from ultralytics import YOLO

    return YOLO(base_pt)


def test_swap_after_predict_rewrites_the_predictors_fused_copy(model, night_vector, images, reference):
    """predict keeps a fused deep copy; a swap that missed it would keep serving the base."""
    assert identical(predictions(model, images), reference["base"])
    assert not model.model.is_fused() and model.predictor.model.backend.model.is_fused()  # Ultralytics 8.4.190 behaviour
    fused_before = state(model.predictor.model.backend.model)
    unfused_before = state(model.model)
    assert swap(model, night_vector, 0.5) == {"name": "fruit-night", "scale": 0.5, "bn": "merge"}
    assert identical(predictions(model, images), reference["applied"])
    unswap(model)
    assert current(model) is None
    assert same_state(state(model.model), unfused_before)
    assert same_state(state(model.predictor.model.backend.model), fused_before)
    assert identical(predictions(model, images), reference["base"])


def test_swapped_weights_equal_applys(model, night_vector, base_model):
    swap(model, night_vector, 0.5)
    applied = state(night_vector.apply(base_model, scale=0.5).model)
    assert same_state(state(model.model), applied)
    unswap(model)
    assert same_state(state(model.model), {k: v for k, v in base_model.module.state_dict().items()})


def test_swap_before_the_first_predict(model, night_vector, images, reference):
    """The predictor is then built from the swapped weights; unswap re-fuses its copy from the base."""
    swap(model, night_vector, 0.5)
    assert identical(predictions(model, images), reference["applied"])
    unswap(model)
    assert identical(predictions(model, images), reference["base"])
    for _ in range(2):  # serve night, day, night, day from one set of weights
        with swapped(model, night_vector, 0.5):
            assert identical(predictions(model, images), reference["applied"])
        assert identical(predictions(model, images), reference["base"])


def test_model_fused_in_place_while_swapped(model, night_vector, images, reference):
    swap(model, night_vector, 0.5)
    model.model.fuse(verbose=False)  # in place: BN folded into the convs, unused head branch dropped
    assert model.model.is_fused()
    unswap(model)
    assert identical(predictions(model, images), reference["base"])
    swap(model, night_vector, 0.5)  # into the fused model: Conv+BN pairs re-fused from the merged tensors
    assert identical(predictions(model, images), reference["applied"])
    unswap(model)
    assert identical(predictions(model, images), reference["base"])


def test_fused_before_the_first_swap_is_refused(model, night_vector):
    model.model.fuse(verbose=False)
    with pytest.raises(TaskVecError, match="fused"):
        swap(model, night_vector, 0.5)


def test_nested_swaps_and_unswap_without_swap_are_refused(model, night_vector):
    with pytest.raises(TaskVecError, match="nothing is swapped"):
        unswap(model)
    swap(model, night_vector, 0.3)
    before = state(model.model)
    with pytest.raises(TaskVecError, match="already swapped.*unswap"):
        swap(model, night_vector, 0.5)
    assert same_state(state(model.model), before) and current(model)["scale"] == 0.3
    with pytest.raises(TaskVecError, match=r"unswap\(model\) before releasing"):
        release(model)
    unswap(model)
    assert state_of(model) is not None
    release(model)  # the base copy is dropped; the next swap takes a new one
    assert state_of(model) is None


def test_context_manager_restores_on_error(model, night_vector, base_model):
    with pytest.raises(RuntimeError, match="boom"), swapped(model, night_vector, 0.5):
        raise RuntimeError("boom")
    assert current(model) is None
    assert same_state(state(model.model), base_model.module.state_dict())


@pytest.mark.parametrize("bn", ["base", "geometric"])
def test_bn_policies_match_merge(model, night_vector, base_model, bn):
    swap(model, night_vector, 0.7, bn=bn)
    assert same_state(state(model.model), state(merge(base_model, [night_vector], scale=0.7, bn=bn).model))
    unswap(model)


def test_per_part_scales_and_compressed_files(model, night_vector, base_model, tmp_path):
    scale = {"backbone": 0.3, "neck": 0.6, "head": 1.0}
    swap(model, night_vector, scale)
    assert same_state(state(model.model), state(night_vector.apply(base_model, scale=scale).model))
    unswap(model)
    path = night_vector.save(tmp_path / "night-int8.safetensors", quant="int8", dtype="fp16")
    swap(model, path, 0.5)
    assert current(model)["name"] == "fruit-night"
    assert same_state(state(model.model), state(TaskVector.load(path).apply(base_model, scale=0.5).model))
    unswap(model)
    assert same_state(state(model.model), base_model.module.state_dict())


def test_vectors_that_do_not_fit_are_refused_before_writing(model, night_vector, base_model):
    other = TaskVector(night_vector.deltas, {}, {**night_vector.meta, "base_fingerprint": "0" * 64})
    with pytest.raises(MismatchError, match="different base"):
        swap(model, other, 0.5)
    carried = TaskVector({}, {"model.23.cv3.0.2.weight": torch.zeros(1, 80, 1, 1)}, dict(night_vector.meta))
    with pytest.raises(MismatchError, match="absolute tensors"):
        swap(model, carried, 0.5)
    with pytest.raises(TaskVecError, match="recalibrate"):
        swap(model, night_vector, 0.5, bn="recalibrate")
    with pytest.raises(TaskVecError, match="non-positive"):
        swap(model, night_vector, -3.0)  # running variances pushed below zero
    with pytest.raises(TaskVecError, match="TaskVector or a .safetensors"):
        swap(model, 42, 0.5)
    assert current(model) is None
    assert same_state(state(model.model), base_model.module.state_dict())
    swap(model, other, 0.5, force=True)  # forced: the same tensors, so the same result as the real vector
    assert same_state(state(model.model), state(night_vector.apply(base_model, scale=0.5).model))
    unswap(model)


def test_cached_placement_notices_an_in_place_fusion(model, night_vector, base_pt, images):
    """A vector touching only BatchNorm tensors: after model.fuse() they live inside the fused convs."""
    bn_only = night_vector.select(["model.*.bn.*"])
    assert bn_only.deltas and all(".bn." in k for k in bn_only.deltas)
    merged = bn_only.apply(base_pt, scale=0.5)
    applied = predictions(merged, images)
    with swapped(model, bn_only, 0.5):
        assert identical(predictions(model, images), applied)
    model.model.fuse(verbose=False)
    with swapped(model, bn_only, 0.5):
        assert identical(predictions(model, images), applied)  # the predictor's copy
        assert same_state(state(model.model), state(merged.model.fuse(verbose=False)))  # model.model, fused in place
