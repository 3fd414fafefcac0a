"""Export formats and precisions: each loads in its anomalib inferencer and predicts on the real bottle test images.

FP32 (ONNX and OpenVINO) must match the torch model within 1e-4 on normalised maps and scores; FP16 and
INT8 maps must correlate with the torch FP32 maps (INT8 post-training quantisation: Pearson >= 0.99).
A small random encoder at 112 -> 98 px, trained for three steps so the normalisation statistics exist.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.deploy import Geometry, crop_box, read_geometry, transform_geometry, uncrop_anomaly_map
from tests.conftest import TINY_ENCODER

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE, CROP_SIZE = 112, 98
STATIC = (IMAGE_SIZE, IMAGE_SIZE)
FP32 = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with AVX-512 BF16 would otherwise run bf16 (README, Deployment)


# the dynamic ONNX and OpenVINO FP16 exports start from one trace of the dynamic-size graph
pytestmark = pytest.mark.usefixtures("reuse_onnx_traces")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)  # OpenVINOInferencer writes an ``openvino_cache`` folder into the working directory
        yield path


@pytest.fixture(scope="module")
def datamodule(mvtec_root):
    return MVTecAD(root=mvtec_root, category="bottle", train_batch_size=8, eval_batch_size=8, num_workers=0)


@pytest.fixture(scope="module")
def trained(workdir, datamodule):
    """(model, engine, checkpoint) after three training steps and a validation pass."""
    torch.manual_seed(0)
    model = Dinomaly(**TINY_ENCODER, image_size=IMAGE_SIZE, crop_size=CROP_SIZE)
    engine = Engine(max_steps=3, default_root_dir=workdir / "run", logger=False, accelerator="cpu", devices=1)
    engine.fit(model, datamodule=datamodule)
    checkpoint = next((workdir / "run").rglob("*.ckpt"))
    return model.eval(), engine, checkpoint


@pytest.fixture(scope="module")
def test_images(mvtec_root):
    """The 11 bottle test images, (3, 900, 900) in [0, 1]."""
    return [read_image(path, as_tensor=True) for path in sorted((mvtec_root / "bottle" / "test").rglob("*.png"))]


def _static(image: torch.Tensor) -> torch.Tensor:
    # clamp: anomalib's inferencers divide by 255 when any value exceeds 1
    return F.interpolate(image[None], size=STATIC, mode="bilinear", antialias=True)[0].clamp(0, 1)


def _predict_all(model, inferencer, images, input_size):
    """Torch reference and exported predictions: lists of (map (98, 98), score) pairs."""
    reference, exported = [], []
    for image in images:
        image = _static(image) if input_size else image
        with torch.no_grad():
            expected = model(image[None])
        reference.append((expected.anomaly_map.squeeze().numpy(), float(expected.pred_score)))
        if isinstance(inferencer, TorchInferencer):
            result = inferencer.predict(image)
            exported.append((result.anomaly_map.detach().squeeze().numpy(), float(result.pred_score)))
        else:
            result = inferencer.predict(image.permute(1, 2, 0).numpy())
            exported.append((np.asarray(result.anomaly_map).squeeze(), float(np.asarray(result.pred_score).ravel()[0])))
        assert exported[-1][0].shape == (CROP_SIZE, CROP_SIZE)
        assert np.isfinite(exported[-1][0]).all() and np.isfinite(exported[-1][1])
    return reference, exported


def _correlations(reference, exported) -> list[float]:
    pairs = zip(reference, exported, strict=True)
    return [float(np.corrcoef(ref.ravel(), out.ravel())[0, 1]) for (ref, _), (out, _) in pairs]


def _max_abs(reference, exported) -> tuple[float, float]:
    maps = max(float(np.abs(ref - out).max()) for (ref, _), (out, _) in zip(reference, exported, strict=True))
    scores = max(abs(ref - out) for (_, ref), (_, out) in zip(reference, exported, strict=True))
    return maps, scores


# (export type, compression, static input size, inferencer config, check): FP32 is checked for parity,
# the others for correlation with the torch FP32 maps (threshold). Dynamic ONNX FP32 and static INT8
# post-training quantisation (through the CLI) have their own tests below. FP32 parity lives here only: the static
# OpenVINO IR in EXPORTS, the dynamic input (any size, batch, non-square greyscale) in the ONNX test below.
EXPORTS = [
    pytest.param(ExportType.TORCH, None, None, None, "parity", id="torch"),
    pytest.param(ExportType.OPENVINO, None, STATIC, FP32, "parity", id="openvino-fp32-static"),
    pytest.param(ExportType.OPENVINO, CompressionType.FP16, None, None, 0.999, id="openvino-fp16-dynamic"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("export_type", "compression", "input_size", "config", "check"), EXPORTS)
def test_export_predicts_on_real_images(
    trained, datamodule, test_images, workdir, monkeypatch, export_type, compression, input_size, config, check
):
    model, engine, _ = trained
    root = workdir / f"{export_type.value}-{compression.value if compression else 'fp32'}-{bool(input_size)}"
    path = engine.export(
        model,
        export_type,
        export_root=root,
        input_size=input_size,
        compression_type=compression,
        datamodule=datamodule if compression == CompressionType.INT8_PTQ else None,
    )
    if export_type == ExportType.TORCH:
        monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # the .pt file is a pickle of our own model
        inferencer = TorchInferencer(path, device="cpu")
    else:
        inferencer = OpenVINOInferencer(path, device="CPU", config=config)
        assert read_geometry(path) == Geometry((IMAGE_SIZE, IMAGE_SIZE), (CROP_SIZE, CROP_SIZE))
    reference, exported = _predict_all(model, inferencer, test_images, input_size)
    assert min(float(np.ptp(ref)) for ref, _ in reference) > 0, "degenerate reference maps"
    if check == "parity":
        map_error, score_error = _max_abs(reference, exported)
        assert map_error <= 1e-4, f"normalised anomaly maps differ by {map_error:.2e}"
        assert score_error <= 1e-4, f"normalised scores differ by {score_error:.2e}"
    else:
        correlations = _correlations(reference, exported)
        assert min(correlations) >= check, f"Pearson correlation with FP32 maps: {correlations}"


@pytest.mark.slow
def test_cli_int8_static_export(trained, workdir, mvtec_root, test_images):
    """``anomalib export`` from the checkpoint alone (no model arguments, no network), INT8 post-training
    quantisation at a static size, calibrated on the 900 px train images."""
    model, _, checkpoint = trained
    root = workdir / "cli-int8"
    command = [
        Path(sys.executable).parent / "anomalib", "export", "--model", "Dinomaly",
        "--export_type", "openvino", "--compression_type", "INT8_PTQ", f"--input_size=[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "--ckpt_path", str(checkpoint), "--export_root", str(root),
        "--data", "MVTecAD", f"--data.root={mvtec_root}", "--data.category=bottle", "--data.num_workers=0",
    ]  # fmt: skip
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=workdir,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert read_geometry(root / "weights" / "openvino" / "model.xml") == Geometry(STATIC, (CROP_SIZE, CROP_SIZE))
    inferencer = OpenVINOInferencer(root / "weights" / "openvino" / "model.xml", device="CPU")
    reference, exported = _predict_all(model, inferencer, test_images, STATIC)
    correlations = _correlations(reference, exported)
    assert min(correlations) >= 0.99, f"Pearson correlation with FP32 maps: {correlations}"


@pytest.fixture(scope="module")
def dynamic_onnx(trained, workdir) -> Path:
    model, engine, _ = trained
    return engine.export(model, ExportType.ONNX, export_root=workdir / "onnx-dynamic")


@pytest.mark.slow
def test_dynamic_onnx_any_size_and_batch(trained, dynamic_onnx, magnetic_tile_root, test_images):
    """Dynamic ONNX FP32: parity on the 900 px test images, a batch of two, and a non-square greyscale image."""
    model, _, _ = trained
    path = dynamic_onnx
    assert read_geometry(path) == Geometry((IMAGE_SIZE, IMAGE_SIZE), (CROP_SIZE, CROP_SIZE))
    inferencer = OpenVINOInferencer(path, device="CPU", config=FP32)
    map_error, score_error = _max_abs(*_predict_all(model, inferencer, test_images, None))
    assert map_error <= 1e-4 and score_error <= 1e-4, (map_error, score_error)
    batch = torch.stack(test_images[:2])
    result = inferencer.predict(batch.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        expected = model(batch)
    np.testing.assert_allclose(np.asarray(result.anomaly_map), expected.anomaly_map.numpy(), atol=1e-4, rtol=0)
    tile_path = next((magnetic_tile_root / "test").rglob("*.jpg"))
    tile = read_image(tile_path, as_tensor=True)
    assert tile.shape[1] != tile.shape[2]
    result = inferencer.predict(tile.permute(1, 2, 0).numpy())
    with torch.no_grad():
        expected = model(tile[None])
    np.testing.assert_allclose(np.asarray(result.anomaly_map), expected.anomaly_map.numpy(), atol=1e-4, rtol=0)


def test_transform_geometry_reads_the_pre_processor():
    transform = Dinomaly.configure_pre_processor(448, 392).transform
    assert transform_geometry(transform) == Geometry((448, 448), (392, 392))
    assert transform_geometry(Dinomaly.configure_pre_processor(448, None).transform) == Geometry((448, 448), None)
    with pytest.raises(ValueError, match="Resize"):
        transform_geometry(Compose([Resize(448), CenterCrop(392)]))


@pytest.mark.parametrize("original", [(900, 900), (300, 517)])
def test_uncrop_inverts_resize_and_center_crop(original):
    """A ramp image, pre-processed like the model input and mapped back, lands where it came from."""
    height, width = original
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    ramp = (ys + 2 * xs)[None]  # (1, H, W)
    geometry = Geometry((448, 448), (392, 392))
    model_input = CenterCrop(392)(Resize((448, 448), antialias=False)(ramp))
    restored = uncrop_anomaly_map(model_input[0], original, geometry)
    top, left, bottom, right = crop_box(original, geometry)
    assert top == pytest.approx(28 * height / 448) and right == pytest.approx(420 * width / 448)
    inside = ~np.isnan(restored)
    rows, cols = np.nonzero(inside)
    expected_box = tuple(round(v) for v in (top, bottom, left, right))
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == expected_box
    margin = 3  # bilinear resampling is exact for a ramp except at the crop border
    interior = (slice(rows.min() + margin, rows.max() - margin), slice(cols.min() + margin, cols.max() - margin))
    error = np.abs(restored[interior] - ramp[0].numpy()[interior]).max()
    pixel = 2.0 / min(height, width)  # the ramp's change over one original pixel (x has weight 2)
    assert error < pixel, f"misaligned by {error / pixel:.2f} pixels"


@pytest.mark.slow
def test_infer_folder_example(trained, dynamic_onnx, workdir, mvtec_root, test_images):
    """examples/infer_folder.py through OpenVINO and the torch checkpoint: same scores, overlays at full size."""
    model, _, checkpoint = trained
    spec = importlib.util.spec_from_file_location("infer_folder", REPO / "examples" / "infer_folder.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    folder = mvtec_root / "bottle" / "test"
    rows = {}
    for name, model_path in (("openvino", dynamic_onnx), ("torch", checkpoint)):
        csv_path = example.run(model_path, folder, workdir / f"infer-{name}", precision="f32")
        with csv_path.open() as handle:
            rows[name] = list(csv.DictReader(handle))
    assert len(rows["openvino"]) == len(test_images) == len(rows["torch"])
    with torch.no_grad():
        expected = [float(model(image[None]).pred_score) for image in test_images]
    for name, table in rows.items():
        scores = [float(row["score"]) for row in table]
        np.testing.assert_allclose(scores, expected, atol=1e-4, err_msg=name)
    row = rows["openvino"][0]
    original = read_image(folder / row["image"])
    overlay = np.asarray(Image.open(workdir / "infer-openvino" / row["overlay"]))
    assert overlay.shape == original.shape
    # outside the region the model saw (56 px border of a 900 px image at 112 -> 98) the image is untouched
    np.testing.assert_allclose(overlay[-40:, -40:] / 255.0, original[-40:, -40:], atol=1 / 255)
    assert np.abs(overlay[450, 450] / 255.0 - original[450, 450]).max() > 2 / 255
