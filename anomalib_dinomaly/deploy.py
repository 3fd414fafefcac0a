"""Deployment: what Dinomaly needs from anomalib's ONNX / OpenVINO export, and mapping maps back to the original image.

anomalib's ``ExportMixin`` does the export (``engine.export`` / ``anomalib export``). Three things are
specific to this model and live here:

- the ONNX file is written at opset 18 (the dynamo exporter's own) instead of anomalib's default 14,
  whose down-conversion fails on this graph and logs a traceback;
- the pre-processing geometry (resize and center-crop sizes) is stored in the ONNX metadata, which
  OpenVINO keeps in the IR's ``rt_info``, so a deployed model can place its map on the original image;
- INT8 post-training quantisation calibrates on the training images (anomalib's default takes the
  validation split, which holds anomalous test images), resized to a static export size, with NNCF's
  transformer preset, and keeps the anomaly-map head in float.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.data import AnomalibDataModule
    from torchvision.transforms.v2 import Transform

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset size
_RESIZE_KEY = "dinomaly_resize"
_CROP_KEY = "dinomaly_crop"


class Geometry(NamedTuple):
    """Where the model input comes from in the original image.

    Attributes:
        resize: (height, width) the image is resized to first; ``None`` keeps the original size.
        crop: (height, width) of the center crop taken after resizing; ``None`` for no crop.
    """

    resize: tuple[int, int] | None
    crop: tuple[int, int] | None


def transform_geometry(transform: Transform | None) -> Geometry:
    """Read the resize and center-crop sizes from a pre-processing transform (a ``Compose`` or a single transform).

    Raises:
        ValueError: a ``Resize`` to a single int (shorter side), whose output size depends on the image.
    """
    transforms = transform.transforms if isinstance(transform, Compose) else [transform]
    resize = crop = None
    for step in transforms:
        if isinstance(step, Resize):
            if len(step.size) != 2:
                msg = f"Cannot place anomaly maps on the original image after {step}: use Resize((height, width))."
                raise ValueError(msg)
            resize = (int(step.size[0]), int(step.size[1]))
        elif isinstance(step, CenterCrop):
            crop = (int(step.size[0]), int(step.size[1]))
    return Geometry(resize, crop)


def _format_size(size: tuple[int, int] | None) -> str:
    return "none" if size is None else f"{size[0]}x{size[1]}"


def _parse_size(text: str, source: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    try:
        height, width = (int(part) for part in text.split("x"))
    except ValueError as error:
        msg = f"Malformed pre-processing size {text!r} in {source}; expected 'HxW' or 'none'."
        raise ValueError(msg) from error
    return height, width


def write_onnx_geometry(onnx_path: str | Path, geometry: Geometry) -> None:
    """Store the geometry in the ONNX file's metadata (weights in external files stay where they are)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {prop.key: prop.value for prop in model.metadata_props}
    props.update({_RESIZE_KEY: _format_size(geometry.resize), _CROP_KEY: _format_size(geometry.crop)})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(onnx_path))


def read_geometry(model_path: str | Path) -> Geometry:
    """The pre-processing geometry stored in an exported ``.onnx`` or OpenVINO ``.xml`` model.

    Raises:
        ValueError: the file carries no geometry (exported by another model or an older version).
    """
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    else:
        import openvino as ov

        model = ov.Core().read_model(str(model_path.with_suffix(".xml")))
        props = {
            key: model.get_rt_info(["framework", key]).astype(str)
            for key in (_RESIZE_KEY, _CROP_KEY)
            if model.has_rt_info(["framework", key])
        }
    if _RESIZE_KEY not in props or _CROP_KEY not in props:
        msg = (
            f"{model_path} holds no Dinomaly pre-processing geometry ({_RESIZE_KEY}, {_CROP_KEY}). "
            "Re-export it with anomalib-dinomaly installed (engine.export / anomalib export)."
        )
        raise ValueError(msg)
    return Geometry(_parse_size(props[_RESIZE_KEY], str(model_path)), _parse_size(props[_CROP_KEY], str(model_path)))


def crop_box(original_size: tuple[int, int], geometry: Geometry) -> tuple[float, float, float, float]:
    """The region of the original image that the model sees, as (top, left, bottom, right) in original pixels.

    The center crop's offsets are rounded as torchvision and anomalib's exported crop round them.
    """
    height, width = original_size
    resized = geometry.resize or (height, width)
    crop = geometry.crop or resized
    top = round((resized[0] - crop[0]) / 2.0)
    left = round((resized[1] - crop[1]) / 2.0)
    scale_y, scale_x = height / resized[0], width / resized[1]
    return top * scale_y, left * scale_x, (top + crop[0]) * scale_y, (left + crop[1]) * scale_x


def uncrop_anomaly_map(
    anomaly_map: np.ndarray | torch.Tensor,
    original_size: tuple[int, int],
    geometry: Geometry,
    fill: float = float("nan"),
) -> np.ndarray:
    """Place a model-input anomaly map on the original image: resized into the crop region, ``fill`` outside.

    Args:
        anomaly_map: (h, w) map on the model input (the center crop), or any shape squeezing to it.
        original_size: (H, W) of the original image.
        geometry: the model's pre-processing (see :func:`read_geometry`, :func:`transform_geometry`).
        fill: value outside the region the model saw.

    Returns:
        (H, W) float32 array.
    """
    tensor = torch.as_tensor(np.asarray(anomaly_map, dtype=np.float32)).squeeze()
    if tensor.ndim != 2:
        msg = f"Expected a single 2-D anomaly map, got shape {tuple(np.shape(anomaly_map))}."
        raise ValueError(msg)
    top, left, bottom, right = (round(value) for value in crop_box(original_size, geometry))
    result = np.full(original_size, fill, dtype=np.float32)
    if bottom > top and right > left:
        size = (bottom - top, right - left)
        result[top:bottom, left:right] = F.interpolate(tensor[None, None], size=size, mode="bilinear")[0, 0].numpy()
    return result


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
