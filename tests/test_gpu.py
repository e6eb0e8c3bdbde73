"""Merges and scoring on a CUDA GPU (marked ``gpu``; skipped only where CUDA is unavailable).

Run on a GPU machine by ``benchmarks/gpu_check.sh`` (or ``pytest -m gpu tests/test_gpu.py``). Checked: the merge
arithmetic runs on the GPU and equals the CPU's, its peak GPU memory is the merged model plus one tensor's inputs;
a recipe with ``device=`` builds the merged model on the GPU holding ONE copy of it; a GPU sweep scores there
(a scale-0 merge scores exactly as the base reference, both fused and run on the GPU); Ray trials asking for a GPU
get one and score on ``cuda:0`` of what they see.
"""

from __future__ import annotations

import pytest
import torch
from conftest import data_yaml

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def model_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())


def test_merge_runs_on_the_gpu_with_one_model_of_memory(base_model, night_vector):
    from yolo_taskvec.merging import merge_states

    vectors = [night_vector, night_vector * 0.5]  # two inputs of different content
    cpu, _ = merge_states(base_model.state, vectors, scale=0.7)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    gpu, report = merge_states(base_model.state, vectors, scale=0.7, device="cuda")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    assert report.fresh and all(gpu[k].is_cuda for k in report.fresh)
    for key in report.fresh:
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-6, atol=1e-6)
    largest = max(t.numel() * t.element_size() for t in base_model.state.values() if t.is_floating_point())
    assert peak <= model_bytes(base_model.state) + (len(vectors) + 3) * largest + 2**20, (peak, model_bytes(base_model.state), largest)


def test_build_merged_keeps_one_copy_of_the_model_on_the_gpu(base_pt, night_pt):
    from yolo_taskvec import Recipe
    from yolo_taskvec.build import build_merged, prepare

    recipe = Recipe.build(base=str(base_pt), inputs=[str(night_pt)], scale=0.5, device="cuda:0")
    prepared = prepare(recipe)
    size = model_bytes(prepared.base.state)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = build_merged(prepared)
    torch.cuda.synchronize()
    held, peak = torch.cuda.memory_allocated() - before, torch.cuda.max_memory_allocated() - before
    assert all(p.is_cuda for p in model.model.parameters()) and all(b.is_cuda for b in model.model.buffers())
    assert held <= 1.1 * size and peak <= 1.3 * size, (held, peak, size)  # the merged tensors are the module's own
    on_cpu = build_merged(prepared, recipe.replace(device="cpu")).model.state_dict()
    for key, value in model.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value.cpu(), on_cpu[key], rtol=1e-6, atol=1e-6)


def test_gpu_sweep_merges_and_scores_on_the_gpu(base_pt, night_pt, tmp_path):
    from yolo_taskvec import sweep

    data = [str(data_yaml("fruit80-night.yaml"))]
    res = sweep(str(base_pt), [str(night_pt)], data, scales=[0.0, 1.0], imgsz=160, batch=32, device=0, reference="base", out=tmp_path, verbose=False, plot=False)
    evaluator = res.scorer.evaluate
    assert evaluator.device.type == "cuda" and res.scorer.prepared.recipe.device == "cuda:0"
    assert all(t.is_cuda for template in evaluator.templates.values() for t in template.targets.values())
    assert res.rows[0]["objective"] == pytest.approx(1.0, abs=1e-6)  # α = 0 is the base's weights, scored as the base reference is
    assert res.rows[1]["fruit80-night/map50_95"] > res.rows[0]["fruit80-night/map50_95"]  # the night fine-tune helps at night


def test_ray_trials_get_their_own_gpu(base_pt, night_pt, tmp_path):
    ray = pytest.importorskip("ray")  # the [ray] extra; the GPU machine may lack it
    from yolo_taskvec import sweep

    data = [str(data_yaml("fruit80-night.yaml"))]
    res = sweep(str(base_pt), [str(night_pt)], data, scales=[0.0, 1.0], imgsz=160, batch=32, backend="ray", workers=1, gpus_per_trial=1, cpus_per_trial=1,
                out=tmp_path, verbose=False, plot=False)
    assert not ray.is_initialized()
    assert [r["device"] for r in res.context["runners"]] == ["cuda:0"] and res.rows[0]["fruit80-night/map50_95"] > 0
