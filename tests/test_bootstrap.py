"""Bootstrap intervals over val images: Ultralytics' own mAP on the full set, its AP on any resample, paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import data_yaml, weight
from hypothesis import given, settings
from hypothesis import strategies as st

from yolo_taskvec.bootstrap import ImageStats, average_precision, bootstrap, difference, interval
from yolo_taskvec.errors import TaskVecError


@pytest.fixture(scope="module")
def scored(base_pt, night_pt):
    """base80 and the night fine-tune on fruit80 val (60 images) and a segment model on coco8-seg val, per image."""
    from yolo_taskvec import Evaluator

    fruit = Evaluator(data_yaml("fruit80.yaml"), imgsz=160, progress=False, per_image=True)
    seg = Evaluator(data_yaml("coco8-seg.yaml"), imgsz=160, progress=False, per_image=True)
    out = {}
    for name, model, ev in (("base", base_pt, fruit), ("night", night_pt, fruit), ("seg", weight("yolo26n-seg-cocomini.pt"), seg)):
        out[name] = (ev(model), dict(ev.image_stats))
    return out


def test_full_set_reproduces_ultralytics_map_exactly(scored):
    for name in ("base", "night"):
        metrics, stats = scored[name]
        assert len(stats["fruit80"]) == 60
        assert stats["fruit80"].scores() == {k: metrics["fruit80"][k] for k in ("map50_95", "map50")}
    metrics, stats = scored["seg"]
    seg = stats["coco8-seg"]
    assert seg.has_masks and seg.scores() == {k: metrics["coco8-seg"][k] for k in ("map50_95", "map50", "mask_map50_95", "mask_map50")}


def test_resample_equals_ap_per_class_on_the_concatenated_images(scored):
    from ultralytics.utils.metrics import ap_per_class

    stats = scored["base"][1]["fruit80"]
    idx = np.random.default_rng(3).integers(0, len(stats), len(stats))
    cat = [np.concatenate([getattr(stats, k)[i] for i in idx], 0) for k in ("tp", "conf", "pred_cls", "target_cls")]
    ap = ap_per_class(*cat)[5]
    assert stats.scores(idx) == {"map50_95": float(ap.mean()), "map50": float(ap[:, 0].mean())}


def test_intervals_are_seeded_and_paired(scored):
    base, night = scored["base"][1]["fruit80"], scored["night"][1]["fruit80"]
    a = interval(base, resamples=200, seed=1)
    assert a == interval(base, resamples=200, seed=1) and a != interval(base, resamples=200, seed=2)
    assert a.low < a.value < a.high and a.value == base.scores()["map50_95"]
    d, r = difference(night, base, resamples=200), difference(base, night, resamples=200)
    assert d.value == pytest.approx(night.scores()["map50_95"] - base.scores()["map50_95"])
    assert (d.low, d.high) == pytest.approx((-r.high, -r.low))  # the same resampled images for both models
    same = difference(base, base, resamples=50)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    ratio = bootstrap({"n": night, "b": base}, lambda s: s["n"]["map50"] / s["b"]["map50"], resamples=50)
    assert ratio.low <= ratio.high and len(ratio.distribution) == 50


def test_refusals(scored):
    base, seg = scored["base"][1]["fruit80"], scored["seg"][1]["coco8-seg"]
    with pytest.raises(TaskVecError, match="same val images"):
        difference(base, seg)
    with pytest.raises(TaskVecError, match="mask statistics"):
        interval(base, "mask_map50_95")
    with pytest.raises(TaskVecError, match="unknown metric"):
        interval(base, "map75")
    with pytest.raises(TaskVecError, match="resamples"):
        interval(base, resamples=0)
    with pytest.raises(TaskVecError, match="confidence"):
        interval(base, confidence=1.0)


def test_evaluate_keeps_per_image_statistics(base_pt):
    from yolo_taskvec import evaluate

    res = evaluate({"base": base_pt}, data_yaml("coco8.yaml"), imgsz=160, progress=False, per_image=True)
    stats = res.images[("base", "coco8")]
    assert len(stats) == 4 and stats.scores()["map50_95"] == res.get("base", "coco8")


@st.composite
def detections(draw):
    """Random per-image statistics: a few images, 0-6 predictions and 0-4 targets each, over 3 classes."""
    n = draw(st.integers(1, 6))
    images = []
    for _ in range(n):
        k = draw(st.integers(0, 6))
        tp = np.array(draw(st.lists(st.lists(st.booleans(), min_size=10, max_size=10), min_size=k, max_size=k)), dtype=bool).reshape(k, 10)
        conf = np.array(draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]), min_size=k, max_size=k)), dtype=np.float32)
        pred = np.array(draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)), dtype=np.float32)
        target = np.array(draw(st.lists(st.integers(0, 2), min_size=0, max_size=4)), dtype=np.float32)
        images.append((tp, conf, pred, target))
    return ImageStats(tuple(f"im{i}.jpg" for i in range(n)), *(tuple(x[j] for x in images) for j in range(4)))


@settings(max_examples=60, deadline=None)
@given(stats=detections(), seed=st.integers(0, 1000))
def test_scores_equal_ultralytics_on_random_statistics(stats, seed):
    from ultralytics.utils.metrics import ap_per_class

    idx = np.random.default_rng(seed).integers(0, len(stats), len(stats))
    cat = [np.concatenate([getattr(stats, k)[i] for i in idx], 0) for k in ("tp", "conf", "pred_cls", "target_cls")]
    ap = ap_per_class(*cat)[5]
    assert np.array_equal(average_precision(*cat), ap)
    expected = (float(ap.mean()), float(ap[:, 0].mean())) if len(ap) else (0.0, 0.0)
    assert tuple(stats.scores(idx).values()) == expected
