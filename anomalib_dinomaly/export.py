"""Export hooks: what Dinomaly needs from anomalib's ONNX / OpenVINO export.

anomalib's ``ExportMixin`` does the export (``engine.export`` / ``anomalib export``). Three things are
specific to this model and live here:

- the ONNX file is written at opset 18 (the dynamo exporter's own) instead of anomalib's default 14,
  whose down-conversion fails on this graph and logs a traceback;
- the pre-processing geometry (resize and center-crop sizes) is stored in the ONNX metadata
  (:mod:`anomalib_dinomaly.deploy` reads it back after deployment);
- INT8 post-training quantisation calibrates on the training images (anomalib's default takes the
  validation split, which holds anomalous test images), resized to a static export size, with NNCF's
  transformer preset, and keeps the anomaly-map head in float. This overrides anomalib's private
  ``ExportMixin._post_training_quantization_ov`` (see tests/test_internals.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn.functional as F  # noqa: N812

from anomalib_dinomaly.deploy import transform_geometry, write_onnx_geometry

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset size


def _nodes_after_last_matmul(model: ov.Model) -> list[str]:
    """Names of the OpenVINO ops computed from the decoder's last MatMul: the anomaly-map head and post-processing."""
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    if not matmuls:
        return []
    names: set[str] = set()
    stack = [matmuls[-1]]
    while stack:
        node = stack.pop()
        for output in node.outputs():
            for target in output.get_target_inputs():
                child = target.get_node()
                if child.get_friendly_name() not in names:
                    names.add(child.get_friendly_name())
                    stack.append(child)
    return sorted(names)


class DinomalyExportMixin:
    """Export behaviour of :class:`~anomalib_dinomaly.Dinomaly`; used before anomalib's ``ExportMixin`` in the MRO."""

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> Path:
        """anomalib's ONNX export at opset 18, with the pre-processing geometry in the file's metadata."""
        kwargs.setdefault("opset_version", ONNX_OPSET)
        onnx_path = super().to_onnx(export_root, model_file_name, input_size, **kwargs)
        write_onnx_geometry(onnx_path, transform_geometry(self.pre_processor.transform if self.pre_processor else None))
        return onnx_path

    def _post_training_quantization_ov(self, model: ov.Model, datamodule: AnomalibDataModule | None = None) -> ov.Model:
        """INT8 post-training quantisation calibrated on the training images; the anomaly-map head stays float.

        Quantising the head (1 - cos, interpolation, blur, top-k) would put the map on an 8-bit grid and,
        with NNCF's defaults, gives NaN ranges that OpenVINO refuses to compile.

        Raises:
            ValueError: no datamodule, or one without training images.
        """
        import nncf

        if datamodule is None:
            msg = "INT8_PTQ needs a datamodule: its training images calibrate the quantisation (CLI: --data ...)."
            raise ValueError(msg)
        datamodule.setup("fit")
        dataset = getattr(datamodule, "train_data", None)
        if dataset is None or len(dataset) == 0:
            msg = f"INT8_PTQ calibrates on training images, but {type(datamodule).__name__} has none."
            raise ValueError(msg)
        shape = model.input(0).partial_shape
        static = shape[2].is_static and shape[3].is_static
        static_size = (shape[2].get_length(), shape[3].get_length()) if static else None
        count = min(len(dataset), MAX_CALIBRATION_IMAGES)
        if count < MAX_CALIBRATION_IMAGES:
            logger.info("INT8 calibration on %d training images (NNCF recommends %d).", count, MAX_CALIBRATION_IMAGES)

        def model_input(index: int) -> np.ndarray:
            image = dataset[index].image[None].float()  # (1, 3, H, W) in [0, 1], original size
            if static_size is not None and tuple(image.shape[-2:]) != static_size:
                image = F.interpolate(image, size=static_size, mode="bilinear", antialias=True).clamp(0, 1)
            return image.numpy()

        return nncf.quantize(
            model,
            nncf.Dataset(range(count), model_input),
            subset_size=count,
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=_nodes_after_last_matmul(model), validate=False),
        )
