"""Training length: the paper's steps only when the trainer was given no length; anything the user sets wins."""

from __future__ import annotations

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_dinomaly import Dinomaly
from tests.conftest import TINY_MODEL

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def model():
    return Dinomaly(**TINY_MODEL, default_max_steps=30)


def attach_for_fit(model, **trainer_kwargs) -> Trainer:
    """Attach ``model`` as ``trainer.fit`` does, before Lightning fills in its own limits."""
    trainer = Trainer(accelerator="cpu", **QUIET, **trainer_kwargs)
    trainer.state.fn = TrainerFn.FITTING
    model.trainer = trainer
    return trainer


def test_no_length_given_trains_the_default_steps(model):
    trainer = attach_for_fit(model)
    assert (trainer.max_steps, trainer.max_epochs) == (30, -1)


@pytest.mark.parametrize(
    ("trainer_kwargs", "limits"),
    [
        ({"max_epochs": 1000}, (-1, 1000)),  # the value Lightning uses when unset, but set by the user
        ({"max_epochs": 3}, (-1, 3)),
        ({"max_steps": 7}, (7, None)),
        ({"max_epochs": -1}, (-1, -1)),
    ],
)
def test_a_length_the_user_sets_wins(model, trainer_kwargs, limits):
    trainer = attach_for_fit(model, **trainer_kwargs)
    assert (trainer.max_steps, trainer.max_epochs) == limits


def test_max_time_alone_is_a_length(model):
    trainer = attach_for_fit(model, max_time={"seconds": 5})
    assert (trainer.max_steps, trainer.max_epochs) == (-1, None)


def test_only_fitting_applies_the_rule(model):
    trainer = Trainer(accelerator="cpu", **QUIET)
    trainer.state.fn = TrainerFn.VALIDATING
    model.trainer = trainer
    assert (trainer.max_steps, trainer.max_epochs) == (-1, None)


class RecordLimits(Callback):
    """Records the limits Lightning trains with, then stops before the first step."""

    limits: tuple[int, int | None] | None = None

    def on_train_start(self, trainer: Trainer, pl_module) -> None:  # noqa: ANN001
        self.limits = (trainer.max_steps, trainer.max_epochs)
        trainer.should_stop = True


@pytest.mark.parametrize(("engine_kwargs", "limits"), [({}, (30, -1)), ({"max_epochs": 1000}, (-1, 1000))])
def test_engine_fit_tells_unset_from_max_epochs_1000(tmp_path, mvtec_root, engine_kwargs, limits):
    record = RecordLimits()
    data = MVTecAD(root=mvtec_root, category="bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, callbacks=[record], logger=False, **engine_kwargs)
    engine.fit(model=Dinomaly(**TINY_MODEL, default_max_steps=30, visualizer=False), datamodule=data)
    assert record.limits == limits
