"""Merge recipes: validated before any file is opened, written down, re-run bit for bit; provenance and model cards;
the package's layering.

Validation tests replace the checkpoint loader with a tripwire: a recipe error must come before any model is loaded.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, data_yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import yolo_taskvec.checkpoint as checkpoint
from yolo_taskvec import Recipe, RecipeError, TaskVecError, merge, save
from yolo_taskvec.bn import merge_statistics
from yolo_taskvec.cli import main
from yolo_taskvec.recipe import parse_mapping, template


class Loaded(AssertionError):
    """A model was loaded although the input was invalid."""


@pytest.fixture
def tripwire(monkeypatch):
    """Any checkpoint load fails the test: validation must answer first."""

    def refuse(*args, **kwargs):
        raise Loaded("a model was loaded before the recipe was validated")

    monkeypatch.setattr(checkpoint, "_from_checkpoint", refuse)
    monkeypatch.setattr(checkpoint.torch, "load", refuse)


BAD_FIELDS = [
    ({"bn": "recalib"}, "unknown BatchNorm policy 'recalib'; did you mean recalibrate"),
    ({"scale": 99}, r"scale 99 is outside \[-10, 10\]"),
    ({"method": "tie"}, "unknown merge method 'tie'; did you mean ties"),
    ({"bn": "recalibrate"}, "bn=recalibrate needs bn_data"),
    ({"bn_data": ["fruit80.yaml"]}, "bn_data is only used by bn=recalibrate"),
    ({"bn": "recalibrate", "bn_data": ["fruit80.txt"]}, "is not a dataset .yaml file"),
    ({"bn_batches": 0}, "bn_batches must be between 1 and"),
    ({"classes": "all"}, "unknown class policy 'all'"),
    ({"duplicates": "max"}, "unknown duplicates rule 'max'"),
    ({"unmatched": "drop"}, "unknown unmatched policy 'drop'"),
    ({"seed": -1}, "seed must be between 0 and"),
    ({"seed": "1_0"}, "seed must be an integer"),
    ({"scale": "1_0"}, "'1_0' is not a number"),
    ({"scale": "nan"}, "must be finite"),
    ({"scale": {"bakbone": 0.5}}, "unknown part 'bakbone' in scale; did you mean backbone"),
    ({"scale": "backbone=0.5,nek=1"}, "unknown part 'nek' in scale; did you mean neck"),
    ({"parts": ["backbone", "tail"]}, "unknown part 'tail'"),
    ({"weights": [1, 2]}, "got 2 weights for 1 inputs"),
    ({"weights": [0]}, "all weights are zero, so the merge would be the base unchanged"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": "cuda:9"}, "device 'cuda:9'"),
    ({"imgsz": -320}, "imgsz must be between 32 and"),
    ({"orthogonalize": "maybe"}, "orthogonalize must be true or false"),
    ({"method": "ties", "density": 2.0}, r"ties: density=2.0 is outside \[0.0, 1.0\]"),
    ({"method": "ties", "desnity": 0.2}, "unknown recipe key 'desnity'; did you mean density"),
    ({"sclae": 0.5}, "unknown recipe key 'sclae'; did you mean scale"),
    ({"method": "slerp"}, "method slerp needs exactly 2 models, got 1"),
    ({"base_sha256": "abc"}, "base_sha256 must be a sha256 hex digest"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_FIELDS, ids=[next(iter(f)) + "=" + str(next(iter(f.values())))[:12] for f, _ in BAD_FIELDS])
def test_every_bad_field_is_refused_before_loading(fields, message, base_pt, night_pt, tripwire):
    with pytest.raises(TaskVecError, match=message):
        merge(str(base_pt), [str(night_pt)], **fields)


def test_bad_files_are_refused_before_loading(base_pt, night_pt, tmp_path, tripwire):
    with pytest.raises(RecipeError, match="is not a .pt checkpoint or a .safetensors"):
        merge(str(base_pt), [str(tmp_path / "night.onnx")])
    with pytest.raises(checkpoint.CheckpointError, match="not found"):  # checked (cheaply) before the base is loaded
        merge(str(base_pt), [str(tmp_path / "missing.pt")])
    with pytest.raises(checkpoint.MismatchError, match="does not match the recipe's sha256 pin"):
        merge(Recipe.build(base=str(base_pt), inputs=[{"model": str(night_pt), "sha256": "0" * 64}]))


def test_per_part_syntax_is_one_everywhere():
    assert parse_mapping("backbone=0.5,neck=1", "scale") == {"backbone": "0.5", "neck": "1"}
    assert parse_mapping("backbone:0.5,neck:1", "scale") == {"backbone": "0.5", "neck": "1"}
    assert parse_mapping("backbone=0:1:0.5;head=0,1", "scales") == {"backbone": "0:1:0.5", "head": "0,1"}
    r = Recipe.build(base="b.pt", inputs=["t.pt"], scale="backbone=0.5,*=1")
    assert r.scale == {"backbone": 0.5, "*": 1.0}
    with pytest.raises(RecipeError, match="'backbone' is given twice"):
        parse_mapping("backbone=1;backbone=2", "scale")


# ----------------------------------------------------------------------------------------------- CLI
CLI_CASES = [
    (["merge", "models={tuned}", "bn=recalib"], "did you mean recalibrate"),
    (["merge", "models={tuned}", "method=ties", "desnity=0.2"], "unknown recipe key 'desnity'; did you mean density"),
    (["apply", "vectors={tuned}", "scale=99"], "outside [-10, 10]"),
    (["sweep", "vectors={tuned}", "data=fruit80.yaml", "method=ties", "desnity=0.2"], "did you mean density"),
    (["sweep", "vectors={tuned}", "data=fruit80.yaml", "metric=map"], "unknown metric 'map'"),
    (["sweep", "vectors={tuned}", "data=fruit80.yaml", "select=train:2"], "fraction of train images must lie in (0, 1]"),
    (["search", "vectors={tuned}", "data=fruit80.yaml", "gpus=1"], "unknown recipe key 'gpus'"),
    (["search", "vectors={tuned}", "data=fruit80.yaml", "space=bakbone"], "unknown axis 'bakbone'"),
    (["soup", "models={tuned},{tuned}", "data=fruit80.yaml", "bn=recalib"], "did you mean recalibrate"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_CASES, ids=[" ".join(a[:1] + a[2:])[:40] for a, _ in CLI_CASES])
def test_cli_modes_refuse_bad_recipes_before_loading_and_leave_no_run_folder(argv, message, base_pt, night_pt, tmp_path, tripwire, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from ultralytics.utils import SETTINGS

    runs = Path(SETTINGS["runs_dir"]) / "taskvec"
    before = sorted(runs.rglob("*")) if runs.exists() else []
    argv = [a.format(tuned=night_pt) for a in argv]
    out = ["out=merged.pt"] if argv[0] in ("merge", "apply") else ["project=" + str(tmp_path / "runs")]
    code = main([argv[0], f"base={base_pt}", *argv[1:], *out])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())  # no merged.pt, no run folder
    assert (sorted(runs.rglob("*")) if runs.exists() else []) == before


# ----------------------------------------------------------------------------------------------- recipe files
def test_copy_cfg_template_is_a_runnable_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["copy-cfg"]) == 0
    text = (tmp_path / "recipe.yaml").read_text()
    assert text == template() and "# " in text
    assert main(["copy-cfg"]) == 2 and "already exists; choose another name, or add exist_ok=true" in capsys.readouterr().err  # never replaced silently
    recipe = Recipe.from_yaml(tmp_path / "recipe.yaml", scale=0.25)
    assert recipe.base == "yolo26n-base80.pt" and recipe.scale == 0.25 and recipe.inputs[0].name == "night"
    assert main(["merge", "cfg=recipe.yaml", "scale=0.5", "out=m.pt"]) == 0  # bare names through weights_dir
    assert torch.load(tmp_path / "m.pt", weights_only=False)["taskvec"]["recipe"]["scale"] == 0.5


def test_recipe_written_by_a_run_reproduces_the_merge_bit_for_bit(base_pt, night_pt, tmp_path, capsys, monkeypatch):
    """A random method with a seed: the recipe beside merged.pt rebuilds exactly the same tensors, from any folder."""
    raccoon = night_pt.with_name("yolo26n-raccoon.pt")
    monkeypatch.chdir(tmp_path)
    argv = ["merge", f"base={base_pt}", f"models={night_pt},{raccoon}", "method=dare", "p=0.7", "seed=3", "weights=1,0.5", "scale=backbone=0.5,*=1", "classes=base", "out=first.pt"]
    assert main(argv) == 0, capsys.readouterr().err
    recipe = yaml.safe_load((tmp_path / "first.recipe.yaml").read_text())
    assert recipe["method"] == "dare" and recipe["params"]["p"] == 0.7 and recipe["seed"] == 3 and recipe["classes"] == "base"
    assert recipe["inputs"][1]["weight"] == 0.5 and len(recipe["inputs"][1]["sha256"]) == 64 and Path(recipe["base"]).is_absolute()
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["merge", f"cfg={tmp_path / 'first.recipe.yaml'}", "out=second.pt"]) == 0
    first = torch.load(tmp_path / "first.pt", weights_only=False)["model"].state_dict()
    second = torch.load(other / "second.pt", weights_only=False)["model"].state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    again = merge(Recipe.from_yaml(tmp_path / "first.recipe.yaml")).model.state_dict()  # the API reads the same file
    assert all(torch.equal(again[k].half() if again[k].is_floating_point() else again[k], first[k]) for k in first)
    changed = merge(Recipe.from_yaml(tmp_path / "first.recipe.yaml", seed=4)).model.state_dict()
    assert not all(torch.equal(changed[k].half(), first[k]) for k in first if first[k].is_floating_point())  # the seed matters


def test_provenance_survives_save_info_convert_info(base_pt, night_pt, tmp_path, capsys):
    merged = merge(str(base_pt), [str(night_pt)], method="ties", density=0.3, scale=0.6, seed=2)
    saved = save(merged, tmp_path / "merged.pt")
    card = (tmp_path / "merged.md").read_text()
    assert "ties (density=0.3," in card and "| scale | 0.6 |" in card and "yolo-taskvec merge cfg=merged.recipe.yaml" in card
    ckpt = torch.load(saved, weights_only=False)
    provenance = ckpt["taskvec"]
    assert provenance["recipe"]["params"]["density"] == 0.3 and provenance["versions"]["ultralytics"]
    assert [f["sha256"] for f in provenance["files"]] == [checkpoint_sha(base_pt), checkpoint_sha(night_pt)]
    assert ckpt["train_args"]["mode"] == "merge" and ckpt["train_args"]["epochs"] == 0
    capsys.readouterr()
    assert main(["info", f"model={saved}"]) == 0
    info = capsys.readouterr().out
    assert "merge: ties (density=0.3," in info and "scale 0.6, bn merge" in info and checkpoint_sha(night_pt)[:16] in info
    assert main(["convert", f"model={saved}", f"out={tmp_path / 'merged.safetensors'}"]) == 0
    capsys.readouterr()
    assert main(["info", f"model={tmp_path / 'merged.safetensors'}"]) == 0
    out = capsys.readouterr().out
    assert "merge: ties (density=0.3," in out and "scale 0.6" in out
    assert main(["convert", f"model={tmp_path / 'merged.safetensors'}", f"out={tmp_path / 'back.pt'}"]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=False)["taskvec"]
    assert back["recipe"] == provenance["recipe"] and back["converted_from"] == "merged.safetensors"


def checkpoint_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_sweep_chooses_on_the_selection_split_and_reports_val(base_pt, night_pt, tmp_path):
    from yolo_taskvec import sweep

    data = [str(data_yaml("fruit80.yaml")), str(data_yaml("fruit80-night.yaml"))]
    result = sweep(str(base_pt), [str(night_pt)], data=data, scales=[0.0, 1.0], select="train:0.1", imgsz=160, batch=32, reference=["base", str(night_pt)],
                   out=tmp_path / "run", plot=False, verbose=False)
    row = result.rows[0]
    assert {"fruit80.select/map50_95", "fruit80-night.select/norm", "select_objective", "fruit80/map50_95", "objective"} <= set(row)
    assert result.choice == "select_objective" and result.best is max(result.rows, key=lambda r: r["select_objective"])
    assert row["fruit80.select/map50_95"] != row["fruit80/map50_95"]  # other images
    assert "chosen on a seeded 10% of each dataset's train images" in result.table()
    saved = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert saved["selection"]["selected_on"].startswith("a seeded 10%") and "select" in saved["selection"]["scores"]


# ----------------------------------------------------------------------------------------------- BatchNorm mixture
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-3, 3), st.floats(0.05, 4)), min_size=2, max_size=4),
    st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_mixture_statistics_are_the_moments_of_the_mixture(sources, raw):
    """Base and inputs as 1-D Gaussians (μ, σ²); convex coefficients: the merged mean and variance are the mixture's."""
    (mu0, var0), inputs = sources[0], sources[1:]
    weights = raw[: len(inputs)]
    total = sum(weights) + 1.0  # the base keeps a positive share
    coefs = [w / total for w in weights]
    base = {"l.running_mean": torch.tensor([mu0], dtype=torch.float64), "l.running_var": torch.tensor([var0], dtype=torch.float64)}
    deltas = {"l.running_mean": [torch.tensor([m - mu0], dtype=torch.float64) for m, _ in inputs], "l.running_var": [torch.tensor([v - var0], dtype=torch.float64) for _, v in inputs]}
    out = merge_statistics("mixture", base, ["l.running_mean", "l.running_var"], deltas.__getitem__, coefs, lambda k: 1.0)
    c = [1 - sum(coefs), *coefs]
    mus, vs = [mu0, *(m for m, _ in inputs)], [var0, *(v for _, v in inputs)]
    mean = sum(ci * m for ci, m in zip(c, mus))
    var = sum(ci * (v + m * m) for ci, m, v in zip(c, mus, vs)) - mean * mean
    assert math.isclose(float(out["l.running_mean"]), mean, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(float(out["l.running_var"]), var, rel_tol=1e-7, abs_tol=1e-9)
    merged = merge_statistics("merge", base, ["l.running_mean", "l.running_var"], deltas.__getitem__, coefs, lambda k: 1.0)
    assert float(out["l.running_var"]) >= float(merged["l.running_var"]) - 1e-12  # the spread of the means only adds


# ----------------------------------------------------------------------------------------------- layering
LAYERS = {
    "methods": 0,
    "core": 1,
    "adapter": 2,
    "engine": 3,
    "top": 4,
}
CORE = {"plain", "version", "limits", "schema", "packing", "atomic", "parts", "bn", "taskvector", "merging", "files", "compress", "analysis", "recipe", "plots"}
ENGINE = {"runs", "backends", "sweep", "search", "soup", "demo", "studio"}
TOP = {"api", "cli", "callbacks", ""}


def layer_of(module: str) -> int:
    if module.startswith("methods") or module == "errors":  # the errors are shared by every layer
        return LAYERS["methods"]
    name = module.split(".")[0]
    if name in CORE:
        return LAYERS["core"]
    if name in ENGINE:
        return LAYERS["engine"]
    if name in TOP:
        return LAYERS["top"]
    return LAYERS["adapter"]


def import_graph() -> dict[str, set[str]]:
    """Every intra-package import (module level and inside functions) of every module of yolo_taskvec."""
    package = REPO / "yolo_taskvec"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(parts)
        here = parts if path.name == "__init__.py" else parts[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                anchor = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = [*anchor, *(node.module.split(".") if node.module else [])]
                names = [".".join(target)] if node.module else [".".join([*target, a.name]) for a in node.names]
                deps.update(n for n in names if (package / n.replace(".", "/")).with_suffix(".py").exists() or (package / n.replace(".", "/")).is_dir() or n == "")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                name = node.module if isinstance(node, ast.ImportFrom) else None
                names = [name] if name else [a.name for a in node.names]
                deps.update(n[len("yolo_taskvec."):] if n != "yolo_taskvec" else "" for n in names if n and n.split(".")[0] == "yolo_taskvec")
        graph[module] = deps - {module}
    return graph


def test_imports_point_downward_and_never_loop():
    graph = import_graph()
    upward = [(m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert not upward, f"imports that point up a layer: {upward}"
    core_to_adapter = [(m, d) for m, deps in graph.items() if layer_of(m) <= LAYERS["core"] for d in deps if layer_of(d) >= LAYERS["adapter"]]
    assert not core_to_adapter
    methods_out = [(m, d) for m, deps in graph.items() if m.startswith("methods") for d in deps if not (d.startswith("methods") or d == "errors")]
    assert not methods_out, methods_out
    # no cycle (depth-first search over the graph)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for d in graph.get(node, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import loop: {' -> '.join([*path, node, d])}")
            if d not in state:
                visit(d, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


# Public API for code outside the package: the names in ``yolo_taskvec.__all__`` (``from yolo_taskvec import X``), the
# training-callback integration module, and the merge studio's documented entry (it needs the optional gradio extra, so
# the top level does not import it).
PUBLIC_MODULES = {"yolo_taskvec", "yolo_taskvec.callbacks", "yolo_taskvec.studio"}
# The only files that may import internals: benchmarks whose purpose is timing the library's internal steps.
# {file: {module: why}}; an entry that is no longer needed fails the test, so the table cannot grow stale.
INTERNAL_IMPORT_EXCEPTIONS = {
    "bench_merge_perf.py": {
        "yolo_taskvec.merging": "times the merge driver's per-tensor loop piece by piece (content ids, per-tensor random generators) against a read-once floor",
        "yolo_taskvec.taskvector": "is_mergeable: the driver's own rule for which tensors random inputs and the timed loop cover",
    },
    "bench_eval_speed.py": {
        "yolo_taskvec.evaluation": "decomposes the Evaluator's cost: wraps its internal steps (private_module, model_state, FusedTemplate) with timers and runs passes on its threads",
        "yolo_taskvec.build": "times the engine's own build path (prepare, build_merged, merge_states, build_module) as a sweep point runs it",
    },
    "bench_union_frontier.py": {
        "yolo_taskvec.repair": "runs repair()'s two steps apart (pseudo_label, fine_tune) to time labelling and training separately, and trains the true-label control with the same trainer",
    },
}


def _imported_modules(source: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every yolo_taskvec import in ``source`` (``import yolo_taskvec.x`` gives no names)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "yolo_taskvec":
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "yolo_taskvec"]
    return out


def test_benchmarks_examples_and_notebooks_use_the_public_api():
    """Outside the package, code imports yolo_taskvec's public API only: names of the top level's ``__all__`` (no
    underscore names), the callbacks module and the studio; internals only through the documented exceptions."""
    import yolo_taskvec

    sources = {p.name: p.read_text() for folder in ("benchmarks", "examples", "notebooks") for p in sorted((REPO / folder).glob("*.py"))}
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        sources[path.name] = "\n".join(line for cell in code for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
    offenders, used = [], set()
    for name, source in sources.items():
        for module, names in _imported_modules(source):
            if module == "yolo_taskvec":
                offenders += [f"{name}: yolo_taskvec.{n} is not in yolo_taskvec.__all__" for n in names if n not in yolo_taskvec.__all__]
            elif module in INTERNAL_IMPORT_EXCEPTIONS.get(name, {}):
                used.add((name, module))
            elif module not in PUBLIC_MODULES:
                offenders.append(f"{name}: {module}")
    stale = [(f, m) for f, modules in INTERNAL_IMPORT_EXCEPTIONS.items() for m in modules if (f, m) not in used]
    assert not offenders, offenders
    assert not stale, f"exceptions no longer needed (remove them from INTERNAL_IMPORT_EXCEPTIONS): {stale}"
    assert {"common.py", "train_with_taskvec.py", "merge_then_validate.ipynb"} <= set(sources)  # every folder is scanned
    assert not any(n.startswith("_") and n != "__version__" for n in yolo_taskvec.__all__)


def test_every_recipe_field_is_a_key_of_every_merging_mode():
    """A field added to Recipe is a CLI key of merge, apply, sweep and search at once (one list in the CLI)."""
    from yolo_taskvec.cli import MODES

    fields = {f.name for f in dataclasses.fields(Recipe)} - {"base", "inputs", "params", "base_sha256"}
    for name in ("merge", "sweep", "search"):
        assert fields <= set(MODES[name][1]), (name, sorted(fields - set(MODES[name][1])))
    assert fields - {"weights", "method"} <= set(MODES["apply"][1])  # apply: base + scale·Σ vectors (task arithmetic)
