"""Arrays of any common image layout turned into what the model and its exported files take.

The exported ONNX / OpenVINO model takes (N, 3, H, W) float32 RGB in [0, 1], and anomalib's
``OpenVINOInferencer.predict`` passes arrays through as they are apart from a division by 255 when a value
exceeds 1 and a (H, W, 3) -> (1, 3, H, W) transposition: a 2-D greyscale array, a (H, W, 4) RGBA array
or a 16-bit array fails or is misread there. :func:`to_rgb_float` converts them first.
"""

from __future__ import annotations

import numpy as np


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """An image array as (H, W, 3) float32 RGB in [0, 1].

    Args:
        image: (H, W) greyscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped); uint8 (scaled by
            1/255), uint16 (scaled by 1/65535, the full 16-bit range) or float already in [0, 1].

    Raises:
        ValueError: another shape, or float values outside [0, 1] (e.g. 0..255: divide by 255 first).
        TypeError: another dtype.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in {1, 3, 4}:
        msg = f"Expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image array, got shape {array.shape}."
        raise ValueError(msg)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0 or high > 1:
            msg = f"Float image values must be in [0, 1], got [{low:g}, {high:g}]; divide 8-bit values by 255 first."
            raise ValueError(msg)
    else:
        msg = f"Expected a uint8, uint16 or float image array, got {array.dtype}."
        raise TypeError(msg)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])
