"""Resuming an interrupted run continues it exactly; the same seed gives the same weights and predictions (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from tests.small_data import make_small_bottle

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.loss import hard_mining_fraction
from anomalib_dinomaly.optim import warmup_cosine_lr
from tests.conftest import TINY_MODEL

STEPS = 6  # 8 training images, batch 4: 2 steps per epoch, a checkpoint after each epoch
CRASH_AT = 5  # mid-epoch 3: the last finished checkpoint is the one after step 4
SCHEDULE = {"warmup_steps": 2, "hard_mining_ramp_steps": 4}  # short, so both schedules move at every step


class Crash(RuntimeError):
    """Stands for a killed job."""


class ScheduleRecorder(Callback):
    """Records, before each optimizer step, the step index, the learning rate and the hard-mining fraction."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.steps: list[tuple[int, float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001, D102
        step = trainer.global_step
        if step == self.crash_at:
            raise Crash(f"simulated crash before step {step}")
        hparams = pl_module.hparams
        p = hard_mining_fraction(step, hparams.hard_mining_percent, hparams.hard_mining_ramp_steps)
        self.steps.append((step, trainer.optimizers[0].param_groups[0]["lr"], p))


@pytest.fixture(scope="module")
def data(mvtec_root, tmp_path_factory) -> Path:
    return make_small_bottle(mvtec_root, tmp_path_factory.mktemp("resume_data"))


def _fit(data: Path, root: Path, recorder: ScheduleRecorder, ckpt_path: Path | None = None) -> tuple[Dinomaly, Engine]:
    seed_everything(7)
    datamodule = MVTecAD(root=data, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0, seed=0)
    model = Dinomaly(**TINY_MODEL, visualizer=False, **SCHEDULE)
    engine = Engine(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        default_root_dir=root,
        callbacks=[recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, engine


def _trainable(model: Dinomaly) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.model.state_dict().items() if not name.startswith("encoder.")}


def _predict(model: Dinomaly, engine: Engine, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    datamodule = MVTecAD(root=data, category="bottle", eval_batch_size=5, num_workers=0, val_split_mode="same_as_test")
    batches = engine.predict(model, datamodule=datamodule)
    return torch.cat([b.pred_score for b in batches]), torch.cat([b.anomaly_map for b in batches])


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    recorder = ScheduleRecorder()
    model, engine = _fit(data, tmp_path_factory.mktemp("uninterrupted"), recorder)
    return model, engine, recorder


@pytest.mark.slow
def test_resume_continues_schedules_and_ends_with_the_same_weights_and_predictions(data, uninterrupted, tmp_path):
    """A crashed run, resumed from its last checkpoint, ends with the weights and predictions of an uninterrupted run
    with the same seed. The crashed run starts afresh with that seed, so its checkpoint equals the uninterrupted
    run's at that step only if the same seed gives the same weights (the check of two whole seeded runs)."""
    reference, reference_engine, reference_steps = uninterrupted
    expected = [
        (step, warmup_cosine_lr(step, 2e-3, 2e-4, STEPS, warmup_steps=2), hard_mining_fraction(step, 0.9, 4))
        for step in range(STEPS)
    ]
    assert [s for s, _, _ in reference_steps.steps] == list(range(STEPS))
    for (step, lr, p), (_, want_lr, want_p) in zip(reference_steps.steps, expected, strict=True):
        assert lr == pytest.approx(want_lr, rel=1e-12), step
        assert p == want_p

    crashing = ScheduleRecorder(crash_at=CRASH_AT)
    with pytest.raises(Crash):
        _fit(data, tmp_path / "interrupted", crashing)
    checkpoints = sorted((tmp_path / "interrupted").rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    saved = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert saved["global_step"] == CRASH_AT - 1  # the last finished epoch survived the crash

    resumed_steps = ScheduleRecorder()
    resumed, resumed_engine = _fit(data, tmp_path / "resumed", resumed_steps, ckpt_path=checkpoints[0])
    # The resumed run starts at the checkpoint's step with that step's learning rate and mining fraction.
    assert resumed_steps.steps == reference_steps.steps[CRASH_AT - 1 :]
    final, resumed_final = _trainable(reference), _trainable(resumed)
    assert final.keys() == resumed_final.keys()
    for name, value in final.items():
        assert torch.equal(resumed_final[name], value), name

    scores, maps = _predict(reference, reference_engine, data)
    again_scores, again_maps = _predict(resumed, resumed_engine, data)
    assert scores.shape == (10,) and maps.shape[0] == 10 and maps.shape[-2:] == (98, 98)
    assert torch.equal(scores, again_scores)
    assert torch.equal(maps, again_maps)
