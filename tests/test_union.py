"""Class-union merging: one detector over the classes of fine-tunes trained on different class sets."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import DATASETS, data_yaml, weight

from yolo_taskvec import TaskVector, merge, method_names, save
from yolo_taskvec.checkpoint import load_model
from yolo_taskvec.cli import main
from yolo_taskvec.errors import MismatchError, OutputError, TaskVecError
from yolo_taskvec.classunion import union_classes
from yolo_taskvec.heads import union_data

TASKS = ("raccoon", "kangaroo", "bccd")
SPECIALISTS = {"fruit80": 0.440, "raccoon": 0.448, "kangaroo": 0.186, "bccd": 0.574}  # mAP50-95, imgsz 320, CPU
VAL = dict(imgsz=320, batch=16, plots=False, verbose=False, device="cpu")


@pytest.fixture(scope="module")
def base_path():
    return weight("yolo26n-base80.pt")


@pytest.fixture(scope="module")
def task_paths():
    return [weight(f"yolo26n-{t}.pt") for t in TASKS]


@pytest.fixture(scope="module")
def base(base_path):
    return load_model(base_path)


@pytest.fixture(scope="module")
def tasks(task_paths):
    """The fine-tunes, loaded once (merge takes loaded models as well as paths)."""
    return [load_model(p) for p in task_paths]


@pytest.fixture(scope="module")
def union_ta(base, tasks):
    """The best task-arithmetic union measured on these checkpoints (their fine-tunes are far from the base)."""
    return merge(base, tasks, "task_arithmetic", scale=0.1, bn="geometric", classes="union")


@pytest.fixture(scope="module")
def views(base_path, task_paths, tmp_path_factory):
    """fruit80, raccoon, kangaroo, bccd val splits with union class ids."""
    yamls = [data_yaml(f"{name}.yaml") for name in SPECIALISTS]
    paths = union_data(union_classes(base_path, task_paths), yamls, tmp_path_factory.mktemp("views"), splits=["val"])
    return dict(zip(SPECIALISTS, paths))


def head_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps the Detect head receives (the merged features)."""
    seen = {}
    handle = model.model[-1].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


def branch_logits(head: torch.nn.Module, attr: str, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [branch(f) for branch, f in zip(getattr(head, attr), feats)]


def check_exact(union_model, references: dict[int, torch.nn.Module], mapping: dict[tuple[int, int], int], coef=None, tol=1e-4):
    """Each task's logits in the union equal its own class branch on the union's merged features."""
    feats = head_inputs(union_model, torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(0)))
    worst = 0.0
    for attr in ("cv3", "one2one_cv3")[: 2 if getattr(union_model.model[-1], "one2one_cv3", None) is not None else 1]:
        union = branch_logits(union_model.model[-1], attr, feats)
        own = {t: branch_logits(m.model[-1], attr, feats) for t, m in references.items()}
        for level in range(len(feats)):
            for new in sorted(set(mapping.values())):
                owners = [(t, old) for (t, old), n in mapping.items() if n == new and t in references]
                expected = coef(owners, own, level) if coef else own[owners[0][0]][level][:, owners[0][1]]
                worst = max(worst, float((union[level][:, new] - expected).abs().max()))
    assert worst <= tol
    return worst


def test_union_classes_ids_and_duplicates(base_path, task_paths):
    u = union_classes({0: "apple", 1: "banana"}, [{0: "cherry"}, {0: "banana", 1: "date"}])
    assert u.names == {0: "apple", 1: "banana", 2: "cherry", 3: "date"}
    assert u.mapping == {(0, 0): 0, (0, 1): 1, (1, 0): 2, (2, 0): 1, (2, 1): 3}
    assert u.owners[1] == [(0, 1), (2, 0)]
    assert u.remap({0: "date", 1: "apple"}) == {0: 3, 1: 0}
    with pytest.raises(MismatchError, match="'fig'"):
        u.remap({0: "fig"})
    real = union_classes(base_path, task_paths)
    assert len(real.names) == 85 and real.names[80] == "raccoon" and real.names[84] == "Platelets"
    assert real.mapping[(0, 47)] == 47 and real.mapping[(1, 0)] == 80 and real.mapping[(2, 0)] == 81 and real.mapping[(3, 2)] == 84


def test_union_is_a_standard_detect_with_exact_task_logits(union_ta, base, tasks):
    model = union_ta.model
    head = model.model[-1]
    assert type(head).__name__ == "Detect" and head.nc == 85 and head.no == 85 + 4 * head.reg_max
    assert len(model.names) == 85 and model.yaml["nc"] == 85 and model.names[81] == "kangaroo"
    for m in head.cv3.modules():
        assert type(m).__module__.split(".")[0] in ("torch", "ultralytics")
    references = {0: base.module, **{i + 1: t.module for i, t in enumerate(tasks)}}
    check_exact(model, references, union_classes(base.names, [t.names for t in tasks]).mapping)
    # the shared parts are the method's merge: base + 0.1 Σ τ
    for key in ("model.0.conv.weight", "model.16.cv1.bn.weight", "model.23.cv2.2.2.weight"):
        expected = base.state[key] + 0.1 * sum(t.state[key] - base.state[key] for t in tasks)
        assert torch.allclose(model.state_dict()[key].float(), expected, atol=1e-6)


def test_same_classes_fine_tune_merges_into_the_base_branch(base, tasks, night_model):
    """A fine-tune of the base's own classes (fruit-night) is merged, class branch included; it adds no classes."""
    union = merge(base, [night_model, tasks[0]], scale=0.5, classes="union")
    assert len(union.model.names) == 81 and union.model.names[80] == "raccoon"
    assert union.ckpt["taskvec"]["union"]["union_own_branches"] == [0, 2]
    key = "model.23.cv3.2.1.1.conv.weight"  # the base's block (task 0) holds base + 0.5·τ(night)
    expected = base.state[key] + 0.5 * (night_model.state[key] - base.state[key])
    assert torch.allclose(union.model.state_dict()[key][:80].float(), expected, atol=1e-6)


def _synthetic_finetune(base_module, nc: int, names: list[str], seed: int) -> torch.nn.Module:
    """A model of the base's architecture with another nc (so a narrower class branch), base weights elsewhere."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel(copy.deepcopy({**base_module.yaml, "nc": nc}), nc=nc, verbose=False)
    own, src = model.state_dict(), base_module.state_dict()
    model.load_state_dict({k: (src[k] + 0.01 * torch.randn_like(src[k]) if k in src and src[k].shape == v.shape and v.is_floating_point() else v) for k, v in own.items()})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.names, model.task = dict(enumerate(names)), "detect"
    return model.eval()


@pytest.mark.parametrize("cfg", ["yolo26n", "yolov8n"])
def test_union_pads_branches_of_different_widths(cfg, base):
    """A class branch narrower than the base's (c3 64 vs 80) is zero-padded; logits stay exact (YOLO26 and legacy heads)."""
    if cfg == "yolo26n":
        base = base.module
    else:
        from ultralytics.nn.tasks import DetectionModel

        torch.manual_seed(0)
        base = DetectionModel("yolov8n.yaml", nc=80, verbose=False).eval()
        base.names, base.task = {i: f"c{i}" for i in range(80)}, "detect"
    tuned = _synthetic_finetune(base, 3, ["x", "y", "z"], seed=1)
    assert tuned.model[-1].cv3[0][-1].in_channels == 64 < base.model[-1].cv3[0][-1].in_channels
    union = merge(base, [tuned], scale=0.5, classes="union")
    assert union.model.names[82] == "z"
    check_exact(union.model, {0: base, 1: tuned}, union_classes(base, [tuned]).mapping)


def test_duplicate_names_collapse_by_mean_or_first(base, tasks):
    raccoon = TaskVector.from_models(base, tasks[0], unmatched="carry")
    kangaroo_as_raccoon = TaskVector.from_models(base, tasks[1], unmatched="carry")
    kangaroo_as_raccoon.meta["names"] = {0: "raccoon"}
    mapping = union_classes(base, [raccoon, kangaroo_as_raccoon]).mapping
    assert mapping[(1, 0)] == mapping[(2, 0)] == 80
    refs = {0: base.module, 1: tasks[0].module, 2: tasks[1].module}
    mean = merge(base, [raccoon, kangaroo_as_raccoon], scale=0.1, classes="union", parts=["backbone"])
    assert len(mean.model.names) == 81

    def averaged(owners, own, level):
        return sum(own[t][level][:, old] for t, old in owners) / len(owners)

    check_exact(mean.model, refs, mapping, coef=averaged)
    first = merge(base, [raccoon, kangaroo_as_raccoon], scale=0.1, classes="union", parts=["backbone"], duplicates="first")
    check_exact(first.model, refs, mapping)
    with pytest.raises(TaskVecError, match="duplicates"):
        merge(base, [raccoon], classes="union", duplicates="max")


def test_union_alone_reproduces_the_specialist_and_keeps_the_base(base, tasks, views):
    """base + 1.0·τ(raccoon) with the raccoon branch scores as the raccoon model; at scale 0 the base's classes score as base80."""
    alone = merge(base, tasks[:1], scale=1.0, classes="union")
    assert abs(alone.val(data=str(views["raccoon"]), **VAL).box.map - SPECIALISTS["raccoon"]) <= 0.01
    untouched = merge(base, tasks, scale=0.0, classes="union")
    assert abs(untouched.val(data=str(views["fruit80"]), **VAL).box.map - SPECIALISTS["fruit80"]) <= 0.01


@pytest.mark.parametrize("method,scale", [("task_arithmetic", 0.1), ("ties", 0.1)])
def test_union_validates_on_every_task(method, scale, union_ta, base, tasks, views):
    assert method in method_names()
    model = union_ta if method == "task_arithmetic" else merge(base, tasks, method, scale=scale, classes="union")
    normalized = {}
    for task, yaml in views.items():
        value = model.val(data=str(yaml), **VAL).box.map
        assert value > 0, f"{method}: union mAP50-95 on {task} is 0"
        normalized[task] = round(float(value) / SPECIALISTS[task], 3)
    print(f"\n{method} scale {scale} bn {model.ckpt['taskvec']['recipe']['bn']}: normalized mAP50-95 {normalized}")


def test_bn_policies_keep_each_tasks_class_branch_statistics(base, tasks):
    key, shared = "model.23.cv3.1.1.1.bn.running_var", "model.4.cv1.bn.running_var"
    for bn, extra in (("geometric", {}), ("base", {}), ("recalibrate", {"bn_data": [str(data_yaml("raccoon.yaml"))], "bn_batches": 1, "imgsz": 160})):
        state = merge(base, tasks, scale=0.3, classes="union", bn=bn, **extra).model.state_dict()
        assert torch.equal(state[key][3 * 80 : 4 * 80].float(), tasks[2].state[key])  # bccd is task 3: its block
        assert torch.equal(state[key][:80].float(), base.state[key])  # the base's classes: task 0
        assert torch.equal(state[shared].float(), base.state[shared]) == (bn == "base")


def test_saved_union_works_without_yolo_taskvec(union_ta, views, tmp_path):
    out = save(union_ta, tmp_path / "union.pt")
    code = (
        "import sys; from ultralytics import YOLO; import numpy as np, onnxruntime as ort, torch; m = YOLO(sys.argv[1]); "
        "print('NC', len(m.names), m.names[84]); "
        "r = m.val(data=sys.argv[2], imgsz=320, batch=16, plots=False, verbose=False, device='cpu'); print('MAP', r.box.map); "
        "p = m.predict(sys.argv[3], imgsz=320, verbose=False, device='cpu'); print('PRED', len(p[0].names)); "
        "f = m.export(format='onnx', imgsz=320, simplify=False); s = ort.InferenceSession(f); "
        "x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32); o = s.run(None, {s.get_inputs()[0].name: x})[0]; "
        "t = YOLO(sys.argv[1]).model.float().fuse(verbose=False).eval()(torch.from_numpy(x))[0].detach().numpy(); "
        "print('ONNX', o.shape[1], float(abs(o - t).max())); "
        "print('IMPORTED', any(k.startswith('yolo_taskvec') for k in sys.modules))"
    )
    image = sorted((DATASETS / "raccoon" / "images" / "val").glob("*.jpg"))[0]
    run = subprocess.run([sys.executable, "-c", code, str(out), str(views["raccoon"]), str(image)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.split(" ", 1)[0] in ("NC", "MAP", "PRED", "ONNX", "IMPORTED"))
    assert lines["NC"] == "85 Platelets" and lines["PRED"] == "85" and lines["IMPORTED"] == "False"
    assert float(lines["MAP"]) > 0
    channels, diff = lines["ONNX"].split()
    assert int(channels) == 4 + 85 and float(diff) < 1e-3


def test_cli_merge_union_and_union_data(base_path, task_paths, tmp_path, capsys):
    out = tmp_path / "union.pt"
    models = ",".join(map(str, task_paths))
    assert main(["merge", f"base={base_path}", f"models={models}", "method=task_arithmetic", "classes=union", "scale=0.1", f"out={out}"]) == 0
    assert "85 classes" in capsys.readouterr().out
    assert len(load_model(out).names) == 85
    assert main(["union-data", f"model={out}", f"data={data_yaml('bccd.yaml')}", f"out={tmp_path / 'views'}"]) == 0
    view = tmp_path / "views" / "bccd.yaml"
    assert f"saved {view}" in capsys.readouterr().out
    labels = sorted((tmp_path / "views" / "bccd" / "labels" / "val").glob("*.txt"))
    assert len(labels) == 72 and {line.split()[0] for f in labels for line in f.read_text().splitlines()} == {"82", "83", "84"}
    source = DATASETS / "bccd" / "labels" / "val" / labels[0].name
    assert [line.split()[1:] for line in labels[0].read_text().splitlines()] == [line.split()[1:] for line in source.read_text().splitlines()]
    assert main(["union-data", f"model={out}", f"data={data_yaml('coco8.yaml')},{data_yaml('raccoon.yaml')}", f"out={tmp_path / 'v2'}"]) == 0  # coco names are the base's


def test_default_policy_refuses_other_class_sets_and_base_keeps_the_base_branch(base, tasks, base_path, task_paths, tmp_path, capsys):
    for task, names in zip(tasks, ("raccoon", "kangaroo", "RBC, WBC, Platelets")):
        with pytest.raises(MismatchError, match=rf"other classes \({names}\).*classes=union.*classes=base"):
            merge(base, [task], scale=0.1)
    assert main(["merge", f"base={base_path}", f"models={task_paths[0]}", f"out={tmp_path / 'never.pt'}"]) == 2
    assert "use classes=union" in capsys.readouterr().err and not (tmp_path / "never.pt").exists()
    kept = merge(base, tasks, scale=0.1, classes="base")
    assert len(kept.model.names) == 80
    state = kept.model.state_dict()
    assert all(torch.equal(state[k].float(), v) for k, v in base.state.items() if k.startswith("model.23.cv3.") and v.is_floating_point())


def test_union_refusals(base, tasks, tmp_path):
    with pytest.raises(OutputError, match="overlaps the dataset"):
        union_data({0: "raccoon"}, [data_yaml("raccoon.yaml")], DATASETS)
    with pytest.raises(MismatchError, match="not in the union"):
        union_data({0: "raccoon"}, [data_yaml("bccd.yaml")], tmp_path)
    (tmp_path / "raccoon").mkdir()
    with pytest.raises(OutputError, match="not a view written by union-data"):
        union_data({0: "raccoon"}, [data_yaml("raccoon.yaml")], tmp_path)
    trunk_only = TaskVector.from_models(base, tasks[0], parts=["backbone", "neck"])
    with pytest.raises(MismatchError, match="1 class names but its class branch cv3.0 gives 80 logits"):
        merge(base, [trunk_only], classes="union")
    seg = weight("yolo26n-seg-cocomini.pt")
    with pytest.raises(MismatchError, match="segment"):
        merge(seg, tasks[:1], classes="union")
