"""Bad input gives a clear error naming the file or the problem (or is handled correctly), and no checkpoint is lost."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from PIL import Image
from tests.small_data import make_small_bottle

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.data_check import DataCheckError, check_samples, inspect_image_file
from tests.conftest import TINY_MODEL

SMALL = {**TINY_MODEL, "visualizer": False, "warmup_steps": 1}


@pytest.fixture
def bottle(mvtec_root, tmp_path) -> Path:
    return make_small_bottle(mvtec_root, tmp_path / "data")


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0, seed=0)


def _engine(root: Path, steps: int = 2, callbacks: list[Callback] | None = None) -> Engine:
    return Engine(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=root,
        callbacks=callbacks or [],
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truncate(path: Path, keep: float = 0.6) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])


@pytest.mark.slow
def test_corrupt_and_truncated_images_are_named_and_the_finished_checkpoint_survives(bottle, tmp_path):
    seed_everything(0)
    _engine(tmp_path / "runs").fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle))
    (checkpoint,) = (tmp_path / "runs").rglob("*.ckpt")
    before = _digest(checkpoint)

    garbage = bottle / "bottle/train/good/000.png"
    garbage.write_bytes(b"this is not a PNG file" * 20)
    truncated = bottle / "bottle/test/broken_large/001.png"
    _truncate(truncated)
    # Resuming into the same folder with the damaged data stops before any training step.
    with pytest.raises(DataCheckError) as error:
        _engine(tmp_path / "runs", steps=4).fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle), ckpt_path=checkpoint)
    message = str(error.value)
    assert str(garbage) in message and "cannot identify image file" in message
    assert str(truncated) in message and "Truncated" in message
    assert message.startswith("2 problem(s)")

    assert _digest(checkpoint) == before
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2


def test_truncated_jpeg_and_missing_file(tmp_path):
    source = tmp_path / "ok.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source, quality=90)
    assert inspect_image_file(source).size == (64, 64)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(source.read_bytes()[:800])
    with pytest.raises(OSError, match="cut.jpg: cannot be read as an image .*truncated"):
        inspect_image_file(truncated)
    with pytest.raises(DataCheckError, match="missing.png: file does not exist"):
        check_samples([(str(tmp_path / "missing.png"), None)])


def test_empty_category_folder_names_the_folder(tmp_path):
    empty = tmp_path / "data" / "bottle"
    (empty / "train" / "good").mkdir(parents=True)
    (empty / "test" / "good").mkdir(parents=True)
    with pytest.raises(RuntimeError, match=f"Found 0 images in {empty}"):
        _engine(tmp_path / "runs").fit(Dinomaly(**SMALL), datamodule=_datamodule(tmp_path / "data"))


def test_mask_with_another_size_than_its_image(bottle, tmp_path):
    mask = bottle / "bottle/ground_truth/contamination/000_mask.png"
    with Image.open(mask) as image:
        image.resize((100, 60), Image.NEAREST).save(mask)
    with pytest.raises(DataCheckError) as error:
        _engine(tmp_path / "runs").fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle))
    message = str(error.value)
    assert f"{mask}: mask is 100x60" in message
    assert f"{bottle / 'bottle/test/contamination/000.png'} is 128x128" in message
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_16_bit_greyscale_is_refused_16_bit_colour_is_read(bottle, tmp_path):
    grey16 = bottle / "bottle/train/good/003.png"
    Image.fromarray((np.arange(128 * 128).reshape(128, 128) * 3).astype(np.uint16)).save(grey16)
    assert Image.open(grey16).mode == "I;16"
    with pytest.raises(DataCheckError, match=rf"{grey16}: 'I;16' image .* clips values above 255"):
        _engine(tmp_path / "runs").fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle))

    # 16-bit RGB: PIL scales it to 8 bit itself, so anomalib reads it right and the check lets it pass.
    import cv2

    rgb8 = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgb16_path = tmp_path / "rgb16.png"
    cv2.imwrite(str(rgb16_path), cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert check_samples([(str(rgb16_path), None)]) == 1
    torch.testing.assert_close(read_image(rgb16_path, as_tensor=True), torch.from_numpy(rgb8).permute(2, 0, 1) / 255.0)


@pytest.mark.slow
def test_rgba_and_palette_images_score_like_their_rgb_pixels(mvtec_root, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    with Image.open(mvtec_root / "bottle/test/broken_large/000.png") as image:
        rgb = image.convert("RGB").resize((128, 128), Image.BILINEAR)
    rgb.save(folder / "rgb.png")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((128, 128)))
    rgba.save(folder / "rgba.png")
    palette = rgb.quantize(colors=64)
    palette.save(folder / "palette.png")
    palette.convert("RGB").save(folder / "palette_as_rgb.png")
    assert [Image.open(folder / f"{n}.png").mode for n in ("rgba", "palette")] == ["RGBA", "P"]

    seed_everything(0)
    predictions = _engine(tmp_path / "runs").predict(Dinomaly(**SMALL), data_path=folder)
    scores = {Path(path).stem: score for batch in predictions for path, score in zip(batch.image_path, batch.pred_score, strict=True)}
    assert set(scores) == {"rgb", "rgba", "palette", "palette_as_rgb"}
    assert all(torch.isfinite(score) for score in scores.values())
    assert scores["rgba"] == scores["rgb"]  # alpha is ignored: the colour channels are scored
    assert scores["palette"] == scores["palette_as_rgb"]  # palette indices are mapped to their colours


@pytest.mark.slow
def test_images_smaller_than_the_crop_are_upsampled(mvtec_root, tmp_path, caplog):
    data = make_small_bottle(mvtec_root, tmp_path / "data", size=40)
    seed_everything(0)
    model = Dinomaly(**SMALL)
    engine = _engine(tmp_path / "runs")
    with caplog.at_level(logging.WARNING, logger="anomalib_dinomaly.data_check"):
        engine.fit(model, datamodule=_datamodule(data))
    assert "image(s) are smaller than the model input 98x98" in caplog.text
    metrics = engine.test(model, datamodule=_datamodule(data))[0]
    assert all(np.isfinite(value) for value in metrics.values())
    batches = engine.predict(model, datamodule=_datamodule(data))
    maps = torch.cat([batch.anomaly_map for batch in batches])
    assert maps.shape[-2:] == (98, 98) and torch.isfinite(maps).all()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_in_a_tensor_are_refused(bad_value):
    model = Dinomaly(**SMALL).eval()
    images = torch.rand(3, 3, 112, 112)
    images[1, 0, 56, 56] = bad_value  # the centre: the crop keeps it
    with pytest.raises(ValueError, match=r"contains 1 NaN/Inf values \(images \[1\] of the batch\)"):
        model(images)
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.model.train()(images[:, :, :98, :98])


@pytest.mark.slow
def test_nan_during_training_stops_and_keeps_the_finished_checkpoint(bottle, tmp_path):
    class PoisonBatch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            if trainer.global_step == 3:
                batch.image[0, 0, 10, 10] = float("nan")

    seed_everything(0)
    with pytest.raises(ValueError, match="NaN/Inf"):
        _engine(tmp_path / "runs", steps=6, callbacks=[PoisonBatch()]).fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle))
    (checkpoint,) = (tmp_path / "runs").rglob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.isfinite(value).all() for value in state["state_dict"].values() if value.is_floating_point())


@pytest.mark.slow
def test_crash_while_saving_keeps_the_previous_checkpoint(bottle, tmp_path):
    class CrashInSecondSave(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):  # noqa: ANN001
            if trainer.global_step == 4:
                raise KeyError("simulated crash while the checkpoint is written")

    seed_everything(0)
    with pytest.raises(KeyError, match="simulated crash"):
        _engine(tmp_path / "runs", steps=6, callbacks=[CrashInSecondSave()]).fit(Dinomaly(**SMALL), datamodule=_datamodule(bottle))
    (checkpoint,) = (tmp_path / "runs").rglob("*.ckpt")
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 2


def test_non_finite_loss_stops_before_the_weights_change():
    model = Dinomaly(**SMALL).train()
    with torch.no_grad():
        model.model.bottleneck.fc1.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="training loss is nan at step 0"):
        model.training_step(SimpleNamespace(image=torch.rand(2, 3, 98, 98)))
