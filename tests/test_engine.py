"""anomalib Engine end to end: fit, test, predict, checkpoint reload (export and its parity: test_export.py)."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.optim import warmup_cosine_lr
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.slow


def datamodule(root):
    return MVTecAD(root=root, category="bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def trained(bottle_run):
    """Six steps, the model's own length (the trainer is given none): one epoch of 5 batches and one more step."""
    return bottle_run.engine, bottle_run.model, bottle_run.datamodule, bottle_run.root


def test_fit_steps_schedule_per_optimizer_step(trained):
    engine, model, _, _ = trained
    assert engine.trainer.global_step == 6
    scheduler = engine.trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.last_epoch == 6
    optimizer = engine.trainer.optimizers[0]
    assert type(optimizer).__name__ == "StableAdamW"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(warmup_cosine_lr(6, 2e-3, 2e-4, 6, 2))
    # results never mix with the built-in's results/Dinomaly/...
    assert "/DinomalyPlugin/MVTecAD/bottle/" in str(engine.trainer.default_root_dir)


def test_paper_steps_when_user_sets_none(trained):
    engine, model, data, _ = trained
    assert engine.trainer.global_step == 6
    assert engine.trainer.lr_scheduler_configs[0].scheduler.total_steps == 6
    # 6 steps end mid-epoch (20 images, batch 4): validation still ran, on the final weights.
    statistics = [model.post_processor._image_threshold.clone(), model.post_processor.image_max.clone()]
    assert all(torch.isfinite(value) for value in statistics)
    engine.validate(model=model, datamodule=data)
    assert model.post_processor._image_threshold.item() == pytest.approx(statistics[0].item(), rel=1e-6)
    assert model.post_processor.image_max.item() == pytest.approx(statistics[1].item(), rel=1e-6)


def test_user_max_epochs_wins(tmp_path, mvtec_root):
    model = Dinomaly(**TINY_MODEL, default_max_steps=3)
    engine = Engine(default_root_dir=tmp_path, logger=False, max_epochs=1)
    engine.fit(model=model, datamodule=datamodule(mvtec_root))
    assert engine.trainer.global_step == 5  # 20 training images, batch 4


def test_test_and_predict(trained, mvtec_root):
    engine, model, data, _ = trained
    metrics = engine.test(model=model, datamodule=data)[0]
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score"):
        assert 0.0 <= metrics[name] <= 1.0
    predictions = engine.predict(model=model, data_path=mvtec_root / "bottle" / "test" / "broken_large")
    assert len(predictions) > 0
    batch = predictions[0]
    assert batch.pred_score.shape[0] == batch.anomaly_map.shape[0]
    assert batch.anomaly_map.shape[-2:] == (98, 98)
    assert torch.all((batch.pred_score >= 0) & (batch.pred_score <= 1))


def test_checkpoint_reload_gives_identical_predictions(trained, tmp_path):
    engine, model, _, _ = trained
    path = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["hyper_parameters"]["pretrained"] is False
    reloaded = Dinomaly.load_from_checkpoint(path).eval()
    model.eval()
    images = torch.rand(2, 3, 120, 150)
    with torch.no_grad():
        expected, actual = model(images), reloaded(images)
    assert torch.equal(expected.pred_score, actual.pred_score)
    assert torch.equal(expected.anomaly_map, actual.anomaly_map)

