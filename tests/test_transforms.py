"""Image-domain transforms: the night preset reproduces the reference fruit80-night, outputs are complete and valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import DATASETS, data_yaml, weight

from yolo_taskvec.cli import main
from yolo_taskvec.data import load_data
from yolo_taskvec.errors import DataError, OutputError, TaskVecError
from yolo_taskvec.transforms import PRESETS, Range, draw_params, get_preset, image_rng, transform_dataset, transform_image


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".cache"}


@pytest.fixture()
def tiny_dataset(tmp_path) -> Path:
    """A private 6-image copy of coco8 whose train split is a txt list (real files, so they can be damaged)."""
    src = DATASETS / "coco8"
    root = tmp_path / "tiny"
    for split in ("train", "val"):
        for img in sorted((src / "images" / split).glob("*.jpg"))[:3]:
            for kind, path in (("images", img), ("labels", src / "labels" / split / f"{img.stem}.txt")):
                dst = root / kind / split / path.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
    (root / "train.txt").write_text("".join(f"./images/train/{p.name}\n" for p in sorted((root / "images/train").glob("*.jpg"))))
    (root / "LICENSE").write_text("test licence\n")
    names = load_data(data_yaml("coco8.yaml"))["names"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "train.txt", "val": "images/val", "names": names}))
    return tmp_path / "tiny.yaml"


def test_night_preset_reproduces_the_reference_dataset_byte_for_byte(tmp_path):
    reference = DATASETS / "fruit80-night"
    result = transform_dataset(data_yaml("fruit80.yaml"), "night", tmp_path / "fruit80-night2", seed=0, verbose=False)
    assert (result.images, result.labels) == (300, 300)
    ours, theirs = files_under(result.folder / "images"), files_under(reference / "images")
    assert ours.keys() == theirs.keys() and len(ours) == 300
    assert [k for k in ours if ours[k] != theirs[k]] == []
    assert files_under(result.folder / "labels") == files_under(reference / "labels")
    # the image statistics follow: same mean brightness and channel means as the reference
    img = cv2.imread(str(result.folder / "images/val/fruit_apple_13.jpg")).reshape(-1, 3).mean(0)
    ref = cv2.imread(str(reference / "images/val/fruit_apple_13.jpg")).reshape(-1, 3).mean(0)
    assert np.array_equal(img, ref)


def test_yamls_record_the_transform_and_validate_directly(tmp_path):
    result = transform_dataset(data_yaml("coco8.yaml"), "fog", tmp_path / "coco8-fog", verbose=False)
    beside = yaml.safe_load(result.yaml.read_text())
    assert result.yaml == tmp_path / "coco8-fog.yaml"
    assert Path(beside["path"]) == result.folder.resolve()
    block = beside["transform"]
    assert block["preset"] == "fog" and block["seed"] == 0 and block["images"] == 8
    assert block["params"]["density"] == [0.5, 1.2] and block["params"]["quality"] == 90
    assert "md5" in block["seeding"]
    inner = yaml.safe_load((result.folder / "coco8-fog.yaml").read_text())
    assert "path" not in inner and inner["transform"] == block and inner["names"] == beside["names"]
    for data in (result.yaml, result.folder / "coco8-fog.yaml"):
        assert Path(load_data(data)["path"]).resolve() == result.folder.resolve()

    from ultralytics import YOLO

    metrics = YOLO(weight("yolo26n-base80.pt")).val(data=str(result.yaml), imgsz=160, batch=8, device="cpu", plots=False, verbose=False, project=str(tmp_path / "runs"))
    assert metrics.box.map >= 0 and len(metrics.box.ap_class_index) > 0


def test_seeded_per_image_by_relative_path(tmp_path):
    a = transform_dataset(data_yaml("coco8.yaml"), "night", tmp_path / "a", verbose=False)
    b = transform_dataset(data_yaml("coco8.yaml"), "night", tmp_path / "b", verbose=False)
    c = transform_dataset(data_yaml("coco8.yaml"), "night", tmp_path / "c", seed=1, verbose=False)
    fa, fb, fc = (files_under(r.folder / "images") for r in (a, b, c))
    assert fa == fb
    assert all(fa[k] != fc[k] for k in fa)
    assert files_under(a.folder / "labels") == files_under(c.folder / "labels") == files_under(DATASETS / "coco8" / "labels")
    image = cv2.imread(str(DATASETS / "coco8/images/val/000000000036.jpg"))
    same, p1 = transform_image(image, "night", "images/val/000000000036.jpg")
    again, p2 = transform_image(image, "night", "images/val/000000000036.jpg")
    other, p3 = transform_image(image, "night", "images/train/000000000036.jpg")
    assert np.array_equal(same, again) and p1 == p2
    assert not np.array_equal(same, other) and p1 != p3


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_shifts_the_image_statistics_it_should(name):
    files = sorted((DATASETS / "fruit80/images/val").glob("*.jpg"))[:6]
    for path in files:
        src = cv2.imread(str(path))
        out, params = transform_image(src, name, f"images/val/{path.name}")
        assert out.shape == src.shape and out.dtype == np.uint8
        s, o = src.astype(np.float64), out.astype(np.float64)
        gray_s, gray_o = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY), cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        sharp = lambda g: cv2.Laplacian(g.astype(np.float64), cv2.CV_64F).var()  # noqa: E731
        if name == "night":
            assert o.mean() < 0.6 * s.mean()
            neutral, _ = transform_image(src, get_preset("night").with_params({"channel_gains": (1, 1, 1)}), f"images/val/{path.name}")
            cast = o.reshape(-1, 3).mean(0) - neutral.reshape(-1, 3).mean(0)  # BGR: bluer, less red
            assert cast[0] > 0 > cast[2]
        elif name == "fog":
            assert o.mean() > s.mean() * 0.95 and gray_o.std() < 0.8 * gray_s.std()
            assert gray_o[: len(gray_o) // 4].std() < gray_o[-len(gray_o) // 4 :].std() + 1  # denser towards the top
        elif name == "blur":
            assert sharp(gray_o) < 0.5 * sharp(gray_s)
            assert abs(o.mean() - s.mean()) < 2
        elif name == "noise":
            assert sharp(gray_o) > 2 * sharp(gray_s)
            assert abs(o.mean() - s.mean()) < 4
        for key, value in get_preset(name).params.items():
            if isinstance(value, Range):
                assert value.lo <= params[key] <= value.hi


def test_parameters_overrides_and_their_errors():
    night = get_preset("night")
    drawn = [draw_params(night, image_rng(f"images/train/{i}.jpg")) for i in range(200)]
    assert min(d["gamma"] for d in drawn) >= 2.0 and max(d["gamma"] for d in drawn) <= 2.8
    assert max(d["gamma"] for d in drawn) - min(d["gamma"] for d in drawn) > 0.6  # actually spread over the range
    assert all(0.45 <= d["gain"] <= 0.65 and 0.015 <= d["noise"] <= 0.03 for d in drawn)
    fixed = night.with_params({"gamma": 1.0, "gain": (1.0, 1.0), "noise": 0, "blur": 0, "quality": 95})
    assert fixed.quality == 95 and draw_params(fixed, image_rng("x.jpg"))["gamma"] == 1.0
    image = np.full((8, 8, 3), 200, np.uint8)
    out, _ = transform_image(image, fixed, "x.jpg")
    assert np.array_equal(out[..., 1], np.full((8, 8), int(np.float32(200 / 255) * np.float32(0.9) * 255)))
    with pytest.raises(TaskVecError, match="preset 'night' has no parameter 'gama'; did you mean gamma"):
        night.with_params({"gama": 2})
    with pytest.raises(TaskVecError, match="low <= high"):
        night.with_params({"gamma": (3, 2)})
    with pytest.raises(TaskVecError, match="takes 3 numbers"):
        night.with_params({"channel_gains": (1, 1)})
    with pytest.raises(TaskVecError, match="quality must be an integer from 1 to 100"):
        night.with_params({"quality": 0})
    with pytest.raises(TaskVecError, match="unknown transform preset 'fgo'; did you mean fog"):
        get_preset("fgo")


def test_txt_split_lists_and_licence_travel_with_the_copy(tiny_dataset, tmp_path):
    result = transform_dataset(tiny_dataset, "blur", tmp_path / "tiny-blur", verbose=False)
    assert (result.images, result.labels) == (6, 6)
    assert (result.folder / "train.txt").read_text() == (tiny_dataset.parent / "tiny/train.txt").read_text()
    assert (result.folder / "LICENSE").read_text() == "test licence\n"
    info = load_data(result.yaml, split="train")
    assert Path(info["train"]).resolve() == (result.folder / "train.txt").resolve()


def test_refusals_and_failures_leave_nothing_behind(tiny_dataset, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        transform_dataset(tiny_dataset, "night", existing, verbose=False)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    with pytest.raises(OutputError, match="overlaps the source dataset"):
        transform_dataset(tiny_dataset, "night", tiny_dataset.parent / "tiny" / "night", verbose=False)
    with pytest.raises(OutputError, match="does not exist"):
        transform_dataset(tiny_dataset, "night", tmp_path / "missing" / "night", verbose=False)
    with pytest.raises(DataError, match="not found"):
        transform_dataset(tmp_path / "nope.yaml", "night", tmp_path / "night", verbose=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    victim = sorted((tiny_dataset.parent / "tiny/images/val").glob("*.jpg"))[-1]
    victim.write_bytes(b"not a jpeg")  # fails after other images were already written
    with pytest.raises(DataError, match=f"image .*{victim.name} cannot be read"):
        transform_dataset(tiny_dataset, "night", tmp_path / "night", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no temporary folder, no yaml


def test_cli_transform(tmp_path, capsys):
    out = tmp_path / "coco8-noise"
    assert main(["transform", f"data={data_yaml('coco8.yaml')}", "preset=noise", f"out={out}", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}: 8 images, 8 label files; validate with data={tmp_path / 'coco8-noise.yaml'}" in printed
    assert yaml.safe_load((tmp_path / "coco8-noise.yaml").read_text())["transform"]["seed"] == 3
    assert main(["transform", f"data={data_yaml('coco8.yaml')}", "preset=nigt", f"out={tmp_path / 'x'}"]) == 2
    assert "unknown transform preset 'nigt'; did you mean night?" in capsys.readouterr().err
    assert main(["transform", f"data={data_yaml('coco8.yaml')}", f"out={out}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["transform", "preset=fog", f"out={tmp_path / 'y'}"]) == 2
    assert "missing argument data=" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
