"""Checkpoints and weight files load without executing code: ``weights_only=True`` or safetensors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from safetensors.torch import save_file

from anomalib_dinomaly import Dinomaly, PretrainedWeightsError, from_official_checkpoint
from anomalib_dinomaly.encoder import load_weights_file
from tests.conftest import TINY_MODEL

SMALL = {**TINY_MODEL, "visualizer": False}


class _CreatesFolderWhenUnpickled:
    """A payload that runs ``os.makedirs(target)`` if a loader executes it."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):  # noqa: ANN204
        return os.makedirs, (self.target,)


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    """A torch file whose unpickling would create a folder, and that folder's path."""
    marker = tmp_path / "code_was_executed"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "payload": _CreatesFolderWhenUnpickled(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):  # the file is what it claims: plain pickle would run the payload
        torch.load(path, weights_only=True)
    return path, marker


@pytest.fixture(scope="module")
def trained(small_bottle_run) -> tuple[Path, Dinomaly, Path]:
    return small_bottle_run.checkpoint, small_bottle_run.model, small_bottle_run.data


def test_encoder_and_official_weight_files_refuse_code(malicious):
    path, marker = malicious
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        load_weights_file(path)
    with pytest.raises(PretrainedWeightsError, match=str(path)):
        Dinomaly(**{**SMALL, "pretrained": True}, encoder_weights=str(path))
    with pytest.raises(PretrainedWeightsError):
        from_official_checkpoint(path)
    assert not marker.exists()


def test_lightning_checkpoints_refuse_code(malicious, tmp_path):
    path, marker = malicious
    with pytest.raises(pickle.UnpicklingError):
        Dinomaly.load_from_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        Engine(accelerator="cpu", default_root_dir=tmp_path / "runs").test(Dinomaly(**SMALL), dataloaders=[], ckpt_path=path)
    assert not marker.exists()


@pytest.mark.slow
def test_our_checkpoints_load_with_weights_only_and_reproduce_the_model(trained):
    checkpoint, model, data = trained
    # Plain torch, no allow-list: everything Dinomaly stores (hyper-parameters, RNG state,
    # StableAdamW and schedule state, post-processor statistics) is tensors and plain Python values.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert "dinomaly_rng_state" in state and state["hyper_parameters"]["pretrained"] is False
    assert torch.isfinite(state["state_dict"]["post_processor.image_max"])

    reloaded = Dinomaly.load_from_checkpoint(checkpoint).eval()  # weights_only=True (anomalib's default)
    model = model.eval()
    images = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        expected, actual = model(images), reloaded(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)


def test_safetensors_encoder_weights(tmp_path):
    source = Dinomaly(**SMALL).model.encoder.vit.state_dict()
    path = tmp_path / "encoder.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in source.items()}, str(path))
    model = Dinomaly(**{**SMALL, "pretrained": True}, encoder_weights=str(path))
    loaded = model.model.encoder.vit.state_dict()
    assert all(torch.equal(loaded[name], source[name]) for name in loaded)
