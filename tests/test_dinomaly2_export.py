"""Dinomaly2 exports through anomalib's path (deploy.py), with a DINOv2 and a DINOv3 encoder (RoPE included).

ONNX (dynamic size) and OpenVINO FP32 (static size) must match the torch model within 1e-4 on the normalised
anomaly maps and scores of real bottle test images; OpenVINO FP16 maps must correlate with them (>= 0.999), and
INT8 post-training quantised maps (static size, calibrated on the training images) at >= 0.99.
Small random encoders trained for two steps, so the normalisation statistics exist.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_dinomaly import Dinomaly2
from anomalib_dinomaly.deploy import Geometry, read_geometry
from tests.conftest import TINY_ENCODER

# the four exports per encoder start from two traces (dynamic and static size), each traced once
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("reuse_onnx_traces")]

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU would otherwise pick bf16 (see NOTES.md)
ENCODERS = {
    "dinov2": {"encoder_name": "dinov2reg_vit_small_14", "image_size": 112, "crop_size": 98},
    "dinov3": {"encoder_name": "dinov3_vit_small_16", "image_size": 128, "crop_size": 112},
}


@pytest.fixture(scope="module", params=list(ENCODERS))
def trained(request, tmp_path_factory, mvtec_root):
    """(model, engine, workdir, settings, datamodule) after two training steps and a validation pass."""
    workdir = tmp_path_factory.mktemp(f"export-{request.param}")
    settings = ENCODERS[request.param]
    torch.manual_seed(0)
    model = Dinomaly2(**TINY_ENCODER, **settings)
    datamodule = MVTecAD(root=mvtec_root, category="bottle", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(max_steps=2, default_root_dir=workdir / "run", logger=False, accelerator="cpu", devices=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        engine.fit(model, datamodule=datamodule)
    return model.eval(), engine, workdir, settings, datamodule


@pytest.fixture(scope="module")
def test_images(mvtec_root):
    """Four bottle test images (good and defective), (3, 900, 900) in [0, 1]."""
    paths = sorted((mvtec_root / "bottle" / "test").rglob("*.png"))
    return [read_image(path, as_tensor=True) for path in paths[::3]]


def _predict(model, inferencer, images, static_size):
    reference, exported = [], []
    for image in images:
        if static_size:
            image = F.interpolate(image[None], size=static_size, mode="bilinear", antialias=True)[0].clamp(0, 1)
        with torch.no_grad():
            expected = model(image[None])
        reference.append((expected.anomaly_map.squeeze().numpy(), float(expected.pred_score)))
        result = inferencer.predict(image.permute(1, 2, 0).numpy())
        exported.append((np.asarray(result.anomaly_map).squeeze(), float(np.asarray(result.pred_score).ravel()[0])))
    assert min(float(np.ptp(ref)) for ref, _ in reference) > 0, "degenerate reference maps"
    return reference, exported


@pytest.mark.parametrize(
    ("export_type", "compression", "static"),
    [
        pytest.param(ExportType.ONNX, None, False, id="onnx-fp32-dynamic"),
        pytest.param(ExportType.OPENVINO, None, True, id="openvino-fp32-static"),
        pytest.param(ExportType.OPENVINO, CompressionType.FP16, False, id="openvino-fp16-dynamic"),
        pytest.param(ExportType.OPENVINO, CompressionType.INT8_PTQ, True, id="openvino-int8-static"),
    ],
)
def test_dinomaly2_exports_match_torch(trained, test_images, export_type, compression, static, monkeypatch):
    model, engine, workdir, settings, datamodule = trained
    monkeypatch.chdir(workdir)  # OpenVINOInferencer writes an ``openvino_cache`` folder into the working directory
    size = (settings["image_size"], settings["image_size"])
    root = workdir / f"{export_type.value}-{compression.value if compression else 'fp32'}-{static}"
    path = engine.export(
        model,
        export_type,
        export_root=root,
        input_size=size if static else None,
        compression_type=compression,
        datamodule=datamodule if compression == CompressionType.INT8_PTQ else None,
    )
    crop = (settings["crop_size"], settings["crop_size"])
    assert read_geometry(path) == Geometry(size, crop)
    inferencer = OpenVINOInferencer(path, device="CPU", config=None if compression else FP32)
    reference, exported = _predict(model, inferencer, test_images, size if static else None)
    assert all(out.shape == crop for out, _ in exported)
    if compression is None:
        map_error = max(float(np.abs(ref - out).max()) for (ref, _), (out, _) in zip(reference, exported, strict=True))
        score_error = max(abs(ref - out) for (_, ref), (_, out) in zip(reference, exported, strict=True))
        assert map_error <= 1e-4, f"normalised anomaly maps differ by {map_error:.2e}"
        assert score_error <= 1e-4, f"normalised scores differ by {score_error:.2e}"
    else:
        pairs = zip(reference, exported, strict=True)
        correlations = [float(np.corrcoef(ref.ravel(), out.ravel())[0, 1]) for (ref, _), (out, _) in pairs]
        threshold = 0.99 if compression == CompressionType.INT8_PTQ else 0.999
        assert min(correlations) >= threshold, f"Pearson correlation with the FP32 maps: {correlations}"
