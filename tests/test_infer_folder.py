"""examples/infer_folder.py: bad files are named and skipped, every image is in the CSV, writes are atomic."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO


def _example():
    spec = importlib.util.spec_from_file_location("infer_folder", REPO / "examples" / "infer_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(small_bottle_run) -> tuple[Path, Path]:
    return small_bottle_run.checkpoint, small_bottle_run.data / "bottle"


@pytest.fixture
def folder(checkpoint, tmp_path) -> Path:
    _, bottle = checkpoint
    images = tmp_path / "images"
    (images / "defects").mkdir(parents=True)
    for index, source in enumerate(sorted((bottle / "test" / "good").glob("*.png"))[:3]):
        shutil.copy(source, images / f"good_{index}.png")
    shutil.copy(bottle / "test/broken_large/000.png", images / "defects/broken.png")
    content = (bottle / "test/broken_large/001.png").read_bytes()
    (images / "defects/truncated.png").write_bytes(content[: len(content) // 2])
    (images / "not_an_image.png").write_bytes(b"this is not a PNG file" * 10)
    Image.fromarray((np.arange(128 * 128).reshape(128, 128) * 3).astype(np.uint16)).save(images / "grey16.png")
    return images


def test_bad_files_are_named_and_skipped_the_rest_scored(checkpoint, folder, tmp_path, capsys):
    model, _ = checkpoint
    output = tmp_path / "out"
    status = _example().main(["--model", str(model), "--input", str(folder), "--output", str(output)])
    assert status == 1
    with (output / "predictions.csv").open() as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"good_0.png", "good_1.png", "good_2.png", "defects/broken.png", "defects/truncated.png",
                         "not_an_image.png", "grey16.png"}  # fmt: skip
    failed = {name: row["reason"] for name, row in rows.items() if row["status"] == "failed"}
    assert set(failed) == {"defects/truncated.png", "not_an_image.png", "grey16.png"}
    assert str(folder / "defects/truncated.png") in failed["defects/truncated.png"] and "runcated" in failed["defects/truncated.png"]
    assert str(folder / "not_an_image.png") in failed["not_an_image.png"]
    assert "'I;16' image" in failed["grey16.png"] and "Convert the images to 8 bit" in failed["grey16.png"]
    for name, row in rows.items():
        if name not in failed:
            assert row["status"] == "ok" and 0 <= float(row["score"]) <= 1 and (output / row["overlay"]).is_file()
        else:
            assert row["score"] == "" and row["overlay"] == ""
    printed = capsys.readouterr()
    assert "4 of 7 images scored" in printed.out and "3 failed" in printed.out
    assert str(folder / "not_an_image.png") in printed.out + printed.err


def test_an_interrupted_rerun_keeps_the_previous_csv(checkpoint, folder, tmp_path, monkeypatch):
    model, _ = checkpoint
    example, output = _example(), tmp_path / "out"
    example.main(["--model", str(model), "--input", str(folder), "--output", str(output)])
    before = (output / "predictions.csv").read_bytes()

    real_fsync = os.fsync
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")

    def fail_on_the_csv(descriptor: int) -> None:
        if "predictions.csv" in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise KeyboardInterrupt  # stands for a kill once the new CSV's bytes are written, before the rename
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fail_on_the_csv)
    with pytest.raises(KeyboardInterrupt):
        example.main(["--model", str(model), "--input", str(folder), "--output", str(output)])
    assert (output / "predictions.csv").read_bytes() == before
    assert not [path for path in output.rglob("*.tmp")]


def test_predictors_take_greyscale_and_rgba_arrays(checkpoint):
    model, _ = checkpoint
    predict, _ = _example().load_predictor(model)
    rgb = np.random.default_rng(0).random((128, 128, 3), dtype=np.float32)
    grey = rgb[..., 0]
    rgba = np.concatenate([rgb, np.ones((128, 128, 1), np.float32)], axis=-1)
    assert predict(grey).score == predict(np.repeat(grey[..., None], 3, axis=-1)).score
    assert predict(rgba).score == predict(rgb).score
