"""`anomalib test|predict|export --model Dinomaly --ckpt_path X` need nothing but the checkpoint: no model
arguments, no network; another model's checkpoint, or one whose weights do not fit, gets one clear message.
(The export from the checkpoint alone is run by tests/test_export.py::test_cli_int8_static_export.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import Padim
from lightning.pytorch import seed_everything
from tests.small_data import make_small_bottle

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.checkpoint_model import MODEL_CLASS_KEY, CheckpointMismatchError
from anomalib_dinomaly.encoder import DinoV2Encoder

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
OFFLINE = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}  # COLUMNS: rich wraps less
#: A ViT-S-named encoder, shrunk, with no registers, a 4-block decoder and its own groups: nothing is a default.
VIT_S_STYLE = {
    "encoder_name": "dinov2reg_vit_small_14", "pretrained": False, "embed_dim": 48, "depth": 10, "num_heads": 3,
    "num_register_tokens": 0, "decoder_depth": 4, "fuse_layer_encoder": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "fuse_layer_decoder": [[0, 1], [2, 3]], "image_size": 112, "crop_size": 98, "top_ratio": 0.02,
}  # fmt: skip


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0, seed=0)


@pytest.fixture(scope="module")
def data(mvtec_root, tmp_path_factory) -> Path:
    return make_small_bottle(mvtec_root, tmp_path_factory.mktemp("checkpoint_only_data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[Path, Dinomaly]:
    root = tmp_path_factory.mktemp("checkpoint_only")
    seed_everything(0)
    model = Dinomaly(**VIT_S_STYLE, visualizer=False, warmup_steps=1)
    Engine(accelerator="cpu", max_steps=2, default_root_dir=root, enable_progress_bar=False).fit(model, datamodule=_datamodule(data))
    (checkpoint,) = root.rglob("*.ckpt")
    return checkpoint, model.eval()


@pytest.fixture(scope="module")
def padim_checkpoint(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("padim")
    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1"], n_features=32, visualizer=False)
    Engine(accelerator="cpu", max_epochs=1, default_root_dir=root, enable_progress_bar=False).fit(model, datamodule=_datamodule(data))
    (checkpoint,) = root.rglob("*.ckpt")
    return checkpoint


@pytest.fixture
def no_download(monkeypatch):
    def refuse(self) -> None:  # noqa: ANN001
        raise AssertionError("the published weights were requested although the checkpoint holds the weights")

    monkeypatch.setattr(DinoV2Encoder, "_download_pretrained", refuse)


def test_a_model_with_other_arguments_takes_the_architecture_from_the_checkpoint(trained, data, tmp_path, no_download):
    checkpoint, reference = trained
    model = Dinomaly(pretrained=True, embed_dim=24, depth=10, num_heads=2, visualizer=False)  # builds offline
    engine = Engine(accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    batches = engine.predict(model, datamodule=_datamodule(data), ckpt_path=checkpoint)
    assert model.hparams.embed_dim == 48 and model.hparams.decoder_depth == 4 and model.hparams.top_ratio == 0.02
    assert model.model.encoder.num_register_tokens == 0 and len(model.model.decoder) == 4
    expected = Engine(accelerator="cpu", default_root_dir=tmp_path / "reference", enable_progress_bar=False).predict(
        reference, datamodule=_datamodule(data)
    )
    scores = torch.cat([batch.pred_score for batch in batches])
    torch.testing.assert_close(scores, torch.cat([batch.pred_score for batch in expected]), rtol=0, atol=0)


def test_other_models_and_architectures_get_one_clear_message(trained, padim_checkpoint, tmp_path):
    with pytest.raises(CheckpointMismatchError, match=rf"{padim_checkpoint} is not a Dinomaly checkpoint: it looks like anomalib's Padim"):
        Dinomaly.load_from_checkpoint(padim_checkpoint)

    checkpoint, _ = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state[MODEL_CLASS_KEY] = "Dinomaly2"
    torch.save(state, tmp_path / "dinomaly2.ckpt")
    with pytest.raises(CheckpointMismatchError, match="holds a Dinomaly2 model, but Dinomaly was asked for.*--model Dinomaly2"):
        Dinomaly.load_from_checkpoint(tmp_path / "dinomaly2.ckpt")

    state[MODEL_CLASS_KEY] = "Dinomaly"
    state["hyper_parameters"]["embed_dim"] = 96  # hyper-parameters that do not describe the weights
    torch.save(state, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"does not fit Dinomaly\(.*\): its weights have .* of another shape"):
        Dinomaly.load_from_checkpoint(tmp_path / "edited.ckpt")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANOMALIB, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **OFFLINE})  # fmt: skip


@pytest.mark.slow
def test_cli_test_and_predict_from_the_checkpoint_alone(trained, padim_checkpoint, data, tmp_path):
    """`anomalib test` (metrics and its report.html) and `anomalib predict` on a folder, given only the checkpoint.

    (`anomalib export` from the checkpoint alone: tests/test_export.py::test_cli_int8_static_export; with model
    arguments beside the checkpoint: tests/test_cli.py.)
    """
    checkpoint, _ = trained
    mvtec = ["--data", "MVTecAD", "--data.root", str(data), "--data.category", "bottle", "--data.num_workers", "0"]
    for args in (
        ["test", "--model", "Dinomaly", *mvtec, "--ckpt_path", str(checkpoint)],
        ["predict", "--model", "Dinomaly", "--data", str(data / "bottle/test/broken_large"), "--ckpt_path", str(checkpoint)],
    ):
        result = _cli(args, tmp_path)
        assert result.returncode == 0, f"{args[0]}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        if args[0] == "test":
            assert "image_AUROC" in result.stdout + result.stderr and "pixel_AUROC" in result.stdout + result.stderr
            assert len(list((tmp_path / "results").rglob("report.html"))) == 1  # written by `anomalib test`

    result = _cli(["test", "--model", "Dinomaly", *mvtec, "--ckpt_path", str(padim_checkpoint)], tmp_path)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert f"{padim_checkpoint} is not a Dinomaly checkpoint: it looks like anomalib's Padim" in output
    assert "size mismatch" not in output and "PretrainedWeightsError" not in output


def test_published_weights_are_fetched_when_first_needed_not_at_construction(monkeypatch):
    published = DinoV2Encoder(**{key: VIT_S_STYLE[key] for key in ("embed_dim", "depth", "num_heads")}).vit.state_dict()
    calls = []

    def fetch(self) -> None:  # noqa: ANN001 - stands for the download from the Hugging Face hub
        calls.append(self.name)
        self.load_pretrained(published, source="test")

    monkeypatch.setattr(DinoV2Encoder, "_download_pretrained", fetch)
    model = Dinomaly(pretrained=True, embed_dim=48, depth=10, num_heads=3, image_size=112, crop_size=98).eval()
    assert calls == []  # building the model needs no network
    rng = torch.get_rng_state()
    model.load_pretrained_encoder()
    assert calls == ["dinov2reg_vit_base_14"] and torch.equal(torch.get_rng_state(), rng)
    for name, value in model.model.encoder.vit.state_dict().items():
        assert torch.equal(value, published[name]), name
    model(torch.rand(1, 3, 112, 112))
    assert len(calls) == 1
