"""One model for a colour (MVTec-AD bottle) and a greyscale (magnetic tile) product: train, test per category,
compare with single-category evaluation, per-category thresholds, CLI and class-separated runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.data import MultiClass, ProductFolder
from anomalib_dinomaly.metrics import REPORTED_METRICS, CategoryTable, CategoryThresholds
from anomalib_dinomaly.separated import main as separated_main
from tests.conftest import REPO, TINY_MODEL
from tests.small_data import multiclass_data_config

pytestmark = pytest.mark.slow

STEPS = 5  # one epoch: 40 training images at batch 8; validation once, at the last step
CATEGORIES = ["bottle", "magnetic_tile"]
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def category_datamodules(mvtec_root, magnetic_tile_root, batch_size=8):
    loader = {"eval_batch_size": batch_size, "num_workers": 0}
    return [
        MVTecAD(root=mvtec_root, category="bottle", **loader),
        ProductFolder(root=magnetic_tile_root, **loader),
    ]


@pytest.fixture(scope="module")
def unified(tmp_path_factory, mvtec_root, magnetic_tile_root):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("unified")
    model = Dinomaly(**TINY_MODEL, warmup_steps=2)
    data = MultiClass(
        datamodules=category_datamodules(mvtec_root, magnetic_tile_root),
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    thresholds = CategoryThresholds(pixel=True)
    engine = Engine(
        default_root_dir=root,
        max_steps=STEPS,
        val_check_interval=STEPS,
        check_val_every_n_epoch=None,
        logger=False,
        callbacks=[thresholds],
    )
    engine.fit(model=model, datamodule=data)
    logged = engine.test(model=model, datamodule=data)[0]
    return SimpleNamespace(
        engine=engine,
        model=model,
        data=data,
        logged=logged,
        table=model.evaluator.table,
        results_dir=Path(engine.trainer.default_root_dir),
        thresholds=thresholds,
        root=root,
    )


def test_table_has_every_category_and_the_unweighted_mean(unified):
    table = unified.table
    assert table.categories == CATEGORIES
    for row in table.rows.values():
        assert set(row) == set(REPORTED_METRICS)
        assert all(0.0 <= value <= 1.0 for value in row.values()), row
    for metric in REPORTED_METRICS:
        expected = sum(table.rows[name][metric] for name in CATEGORIES) / len(CATEGORIES)
        assert table.mean[metric] == pytest.approx(expected, abs=1e-12)
        assert unified.logged[metric] == pytest.approx(expected, abs=1e-6)
        for name in CATEGORIES:
            assert unified.logged[f"{metric}/{name}"] == pytest.approx(table.rows[name][metric], abs=1e-6)
    assert {"image_F1Score", "pixel_F1Score"} <= set(unified.logged)  # global threshold, all images

    assert CategoryTable.read_csv(unified.results_dir / "per_category_metrics.csv").rows == table.rows
    rows = (unified.results_dir / "per_category_metrics.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in rows[2:]] == [*CATEGORIES, "**mean**"]
    page = (unified.results_dir / "report.html").read_text()  # the test report draws each category's threshold
    for name, threshold in unified.thresholds.normalized(unified.model.post_processor)[0].items():
        assert f'id="category-{name}"' in page and f"category threshold {threshold:.3g}" in page


def test_rows_equal_a_single_category_evaluation_of_the_same_model(unified, mvtec_root, magnetic_tile_root):
    for name, datamodule in zip(CATEGORIES, category_datamodules(mvtec_root, magnetic_tile_root, 4), strict=True):
        unified.engine.test(model=unified.model, datamodule=datamodule)
        single = unified.model.evaluator.table
        assert single.categories == [name]
        assert single.rows[name] == pytest.approx(unified.table.rows[name], abs=1e-6)


def test_per_category_thresholds_label_post_processed_outputs(unified, mvtec_root, magnetic_tile_root):
    """The file's normalised thresholds label the post-processed outputs, which exported models reproduce
    (FP32 parity: test_export.py), so the file applies to an exported model unchanged."""
    thresholds = json.loads((unified.results_dir / "category_thresholds.json").read_text())
    for level in ("image", "pixel"):
        assert set(thresholds["raw"][level]) == set(thresholds["normalized"][level]) == set(CATEGORIES)
    assert unified.thresholds.image_thresholds == thresholds["raw"]["image"]
    normalized = thresholds["normalized"]["image"]

    single = MultiClass(datamodules=category_datamodules(mvtec_root, magnetic_tile_root), eval_batch_size=1, num_workers=0)
    predictions = unified.engine.predict(model=unified.model, datamodule=single)
    assert len(predictions) == 22
    pixel = thresholds["normalized"]["pixel"]
    for batch in predictions:  # labels set on raw scores = the file's thresholds on post-processed scores
        (category,), score = batch.category, float(batch.pred_score)
        if abs(score - normalized[category]) > 1e-5:
            assert bool(batch.pred_label) == (score > normalized[category]), batch.image_path
        clear = (batch.anomaly_map - pixel[category]).abs() > 1e-5
        assert torch.equal(batch.pred_mask[clear], (batch.anomaly_map > pixel[category])[clear])

def write_config(path: Path, mvtec_root: Path, magnetic_tile_root: Path) -> Path:
    config = {
        "model": {"class_path": "Dinomaly", "init_args": TINY_MODEL},
        "data": multiclass_data_config(mvtec_root, magnetic_tile_root),
        "trainer": {"max_steps": 2, "val_check_interval": 2, "check_val_every_n_epoch": None, "logger": False},
        "default_root_dir": "results",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=400, env=dict(os.environ))
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def assert_table(path: Path) -> None:
    table = CategoryTable.read_csv(path)
    assert table.categories == CATEGORIES
    assert all(0.0 <= value <= 1.0 for row in table.rows.values() for value in row.values())


def test_cli_unified_and_class_separated_one_liners(tmp_path, monkeypatch, mvtec_root, magnetic_tile_root):
    config = write_config(tmp_path / "config.yaml", mvtec_root, magnetic_tile_root)
    run([ANOMALIB, "train", "--config", str(config)], cwd=tmp_path)
    assert_table(tmp_path / "results/DinomalyPlugin/MultiClass/unified/v0/per_category_metrics.csv")

    # the one-liner `python -m anomalib_dinomaly.separated --config ...`, called in-process to save a start-up
    monkeypatch.chdir(tmp_path)
    table = separated_main(["--config", str(config)])
    assert_table(tmp_path / "results/DinomalyPlugin/MultiClass/separated/per_category_metrics.csv")
    assert table.categories == CATEGORIES
    for name in CATEGORIES:  # one model each
        assert list((tmp_path / "results/DinomalyPlugin").glob(f"*/{name}/v0/weights/lightning/model.ckpt"))


def test_benchmark_example_fails_fast_and_names_what_is_missing(tmp_path, mvtec_root):
    weights = tmp_path / "missing.safetensors"
    script = REPO / "examples" / "paper_benchmark.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dataset", "MVTecAD", "--root", str(mvtec_root), "--encoder-weights", str(weights)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "lacks the categories ['cable'" in result.stderr  # only bottle is here
    assert f"Encoder weights file {weights} does not exist" in result.stderr
    assert ("No CUDA GPU" in result.stderr) == (not torch.cuda.is_available())
