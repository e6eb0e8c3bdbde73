"""Exact branches with a shared trunk prefix: ``merge(base, models, classes="union", share=k)``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import DATASETS, data_yaml, weight

from yolo_taskvec import TaskVector, merge, save
from yolo_taskvec.branches import NEG_LOGIT, branch_yaml, gflops
from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.errors import MismatchError, TaskVecError
from yolo_taskvec.classunion import union_classes
from yolo_taskvec.heads import union_data

TASKS = ("raccoon", "kangaroo")


@pytest.fixture(scope="module")
def base(base_model):
    return base_model


@pytest.fixture(scope="module")
def tasks():
    return [load_model(weight(f"yolo26n-{t}.pt")) for t in TASKS]


@pytest.fixture(scope="module")
def exact(base, tasks):
    """Nothing shared: base80, raccoon and kangaroo side by side in one detector."""
    return merge(base, tasks, "ties", scale=0.3, classes="union", share=0)


def raw(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Decoded one-to-many predictions (B, 4 + nc, anchors): boxes and every class score of every anchor."""
    head = module.model[-1]
    head.end2end = False
    try:
        with torch.no_grad():
            return module(x)[0]
    finally:
        head.end2end = True


def detections(module: torch.nn.Module, x: torch.Tensor, conf: float = 0.05) -> list[torch.Tensor]:
    """End-to-end (NMS-free top-k) detections per image above ``conf``: rows x1 y1 x2 y2 score class."""
    with torch.no_grad():
        out = module(x)[0]
    return [d[d[:, 4] > conf] for d in out]


def images(n: int = 2) -> torch.Tensor:
    """Real letterboxed images of the tasks (random tensors give no confident detections)."""
    from yolo_taskvec.recalibration import letterboxed_batches

    files = [sorted((DATASETS / t / "images" / "val").glob("*.jpg"))[0] for t in ("fruit80", *TASKS)][:n + 1]
    return next(letterboxed_batches(files, 320, len(files), 1))


def test_branch_yaml_is_a_plain_ultralytics_model_with_strides_per_source(base):
    from ultralytics.nn.tasks import DetectionModel

    yaml, where = branch_yaml(base.yaml, 5, 2, 81)
    layers = yaml["backbone"] + yaml["head"]
    assert len(layers) == 5 + 2 * 18 + 1 and layers[-1][0] == [where[(0, 16)], where[(0, 19)], where[(0, 22)], where[(1, 16)], where[(1, 19)], where[(1, 22)]]
    assert where[(1, 12)] == 5 + 18 + 7 and layers[where[(1, 12)]][0] == [where[(1, 11)], where[(1, 6)]]  # skip connections stay in the branch
    assert layers[where[(1, 5)]][0] == 4  # the first branch layer reads the last shared one
    model = DetectionModel(yaml, verbose=False)
    assert model.stride.tolist() == [8, 16, 32, 8, 16, 32]
    nothing, _ = branch_yaml(base.yaml, 0, 2, 81)
    assert nothing["backbone"][0][2] == "nn.Identity" and nothing["backbone"][1 + 23][0] == 0  # branch 2 reads the image


def test_nothing_shared_reproduces_every_specialist(exact, base, tasks, tmp_path):
    """Per-class predictions of the saved (fp16) union equal each specialist's, for all anchors and end to end."""
    path = save(exact, tmp_path / "branches.pt")
    union = load_model(path).module
    assert union.names[80] == "raccoon" and union.names[81] == "kangaroo" and len(union.names) == 82
    specialists = [base.module, *(t.module for t in tasks)]
    owned = [list(range(80)), [80], [81]]
    x = images()
    anchors = raw(base.module, x).shape[-1]
    together = raw(union, x)
    assert together.shape == (len(x), 4 + 82, 3 * anchors)
    for s, (model, ids) in enumerate(zip(specialists, owned)):
        mine = together[:, :, s * anchors : (s + 1) * anchors]
        alone = raw(model, x)
        torch.testing.assert_close(mine[:, :4], alone[:, :4], atol=1e-3, rtol=1e-3)  # boxes in pixels
        torch.testing.assert_close(mine[:, [4 + i for i in ids]], alone[:, 4:], atol=1e-4, rtol=1e-3)
        others = [4 + i for i in range(82) if i not in ids]
        assert float(mine[:, others].max()) < 1e-12  # a source's levels score only its classes
    ends = detections(union, x)
    for s, (model, ids) in enumerate(zip(specialists, owned)):
        for own, got in zip(detections(model, x), ends):
            got = got[torch.isin(got[:, 5], torch.tensor(ids, dtype=got.dtype))]
            got[:, 5] = torch.tensor([ids.index(int(c)) for c in got[:, 5]], dtype=got.dtype)
            key = lambda d: d[torch.argsort(d[:, 4], descending=True)]  # noqa: E731
            assert got.shape == own.shape, f"source {s}: {got.shape[0]} vs {own.shape[0]} detections"
            torch.testing.assert_close(key(got), key(own), atol=2e-3, rtol=1e-3)


def test_shared_prefix_is_the_merge_and_branches_are_each_sources_own(base, tasks):
    union = merge(base, tasks, "task_arithmetic", scale=0.5, classes="union", share=5, bn="geometric")
    state = union.model.state_dict()
    _, where = branch_yaml(base.yaml, 5, 3, 82)
    for key in ("model.0.conv.weight", "model.4.m.0.cv1.conv.weight", "model.3.bn.bias"):
        expected = base.state[key] + 0.5 * sum(t.state[key] - base.state[key] for t in tasks)
        torch.testing.assert_close(state[key].float(), expected, atol=1e-6, rtol=0)
    for s, model in enumerate([base, *tasks]):
        for key in ("model.5.conv.weight", "model.13.m.0.cv1.bn.running_var", "model.22.cv2.conv.weight"):
            layer = int(key.split(".")[1])
            assert torch.equal(state[key.replace(f"model.{layer}.", f"model.{where[(s, layer)]}.", 1)].float(), model.state[key])
    assert union.ckpt["taskvec"]["union"]["share"] == 5 and union.ckpt["taskvec"]["union"]["strides"] == [8.0, 16.0, 32.0] * 3
    head = union.model.model[-1]
    assert head.nl == 9 and torch.equal(head.cv3[3][2].bias[:80], torch.full((80,), NEG_LOGIT))


def test_branched_union_rebuilds_from_its_yaml_and_costs_what_it_holds(exact, base):
    """Ultralytics' trainer rebuilds a model from its yaml: every tensor must fit; GFLOPs scale with the branches."""
    from ultralytics.nn.tasks import DetectionModel

    rebuilt = DetectionModel(exact.model.yaml, nc=exact.model.yaml["nc"], verbose=False).state_dict()
    held = exact.model.state_dict()
    assert rebuilt.keys() == held.keys() and all(rebuilt[k].shape == v.shape for k, v in held.items())
    one = gflops(base.module, 320)
    assert 2.9 < gflops(exact, 320) / one < 3.2  # three whole networks (class branches 80 -> 82 wide)
    trunk = merge(base, [weight("yolo26n-raccoon.pt")], scale=0.1, classes="union", share=23)
    assert type(trunk.model.model[-1]).__name__ == "Detect" and trunk.model.model[-1].nl == 3  # share = head: one trunk
    assert 1.0 < gflops(trunk, 320) / one < 1.2


def test_recalibrate_touches_only_the_shared_statistics(base, tasks):
    union = merge(base, tasks[:1], scale=0.3, classes="union", share=4, bn="recalibrate", bn_data=[str(data_yaml("raccoon.yaml"))], bn_batches=1, imgsz=160)
    state = union.model.state_dict()
    _, where = branch_yaml(base.yaml, 4, 2, 81)
    assert not torch.equal(state["model.2.cv1.bn.running_var"].float(), base.state["model.2.cv1.bn.running_var"])
    for s, model in enumerate([base, tasks[0]]):
        key = "model.8.cv1.bn.running_mean"
        assert torch.equal(state[key.replace("model.8.", f"model.{where[(s, 8)]}.")].float(), model.state[key])


def test_saved_branches_work_without_yolo_taskvec(exact, base, tasks, tmp_path):
    out = save(exact, tmp_path / "branches.pt")
    views = union_data(union_classes(base, tasks), [data_yaml("raccoon.yaml")], tmp_path / "views", splits=["val"])
    code = (
        "import sys; from ultralytics import YOLO; import numpy as np, onnxruntime as ort, torch; m = YOLO(sys.argv[1]); "
        "print('STRIDE', ','.join(str(int(s)) for s in m.model.stride)); "
        "r = m.val(data=sys.argv[2], imgsz=320, batch=16, plots=False, verbose=False, device='cpu'); print('MAP', r.box.map); "
        "p = m.predict(sys.argv[3], imgsz=320, verbose=False, device='cpu'); print('PRED', len(p[0].names), len(p[0].boxes)); "
        "f = m.export(format='onnx', imgsz=320, simplify=False); s = ort.InferenceSession(f); "
        "x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32); o = s.run(None, {s.get_inputs()[0].name: x})[0]; "
        "t = YOLO(sys.argv[1]).model.float().fuse(verbose=False).eval()(torch.from_numpy(x))[0].detach().numpy(); "
        "print('ONNX', o.shape[1], float(abs(o - t).max())); "
        "print('IMPORTED', any(k.startswith('yolo_taskvec') for k in sys.modules))"
    )
    image = sorted((DATASETS / "raccoon" / "images" / "val").glob("*.jpg"))[0]
    run = subprocess.run([sys.executable, "-c", code, str(out), str(views[0]), str(image)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in ("STRIDE", "MAP", "PRED", "ONNX", "IMPORTED"))
    assert lines["STRIDE"] == "8,16,32,8,16,32,8,16,32" and lines["IMPORTED"] == "False"
    from ultralytics import YOLO

    specialist = YOLO(str(weight("yolo26n-raccoon.pt"))).val(data=str(data_yaml("raccoon.yaml")), imgsz=320, batch=16, plots=False, verbose=False, device="cpu").box.map
    assert abs(float(lines["MAP"]) - specialist) <= 0.01, (lines["MAP"], specialist)  # the raccoon branch is the specialist
    assert lines["PRED"].split()[0] == "82"
    channels, diff = lines["ONNX"].split()
    assert int(channels) == 4 + 82 and float(diff) < 1e-3


def test_share_refusals(base, tasks):
    with pytest.raises(TaskVecError, match=r"share=24 is beyond the last trunk layer: .* trunk layers 0\.\.22, so share is 0 \(exact branches\) to 23"):
        merge(base, tasks[:1], classes="union", share=24)
    with pytest.raises(TaskVecError, match="share must be between 0 and"):
        merge(base, tasks[:1], classes="union", share=-1)
    with pytest.raises(TaskVecError, match="share must be an integer"):
        merge(base, tasks[:1], classes="union", share=2.5)
    other = TaskVector.from_models(base, tasks[0], unmatched="carry")
    other.meta["base_yaml"] = {**base.yaml, "scale": "s"}
    with pytest.raises(MismatchError, match="another architecture .*scale s.* a class union needs sources of one base architecture"):
        merge(base, [other], classes="union", share=0, force=True)
