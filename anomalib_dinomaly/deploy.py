"""After deployment: where an exported model's input comes from in the original image.

The export (:mod:`anomalib_dinomaly.export`) stores the pre-processing geometry (resize and center-crop
sizes) in the ONNX file's metadata, which OpenVINO keeps in the IR's ``rt_info``. With it, a deployed model's
anomaly map can be placed back on the original image: :func:`read_geometry`, :func:`crop_box`,
:func:`uncrop_anomaly_map`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

if TYPE_CHECKING:
    from torchvision.transforms.v2 import Transform

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
