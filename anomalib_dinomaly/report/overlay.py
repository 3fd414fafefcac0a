"""Report thumbnails: the original image with the anomaly map where the model looked, on a fixed colour scale.

The map covers the model input (the center crop); :func:`~anomalib_dinomaly.deploy.uncrop_anomaly_map`
puts it back on the region of the original image the crop came from, so what the model never saw stays
uncoloured. Colours are fixed by the threshold, not stretched per image: the same colour means the same
score everywhere in the report, and a normal image does not light up just because its map has a maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anomalib_dinomaly.deploy import Geometry, uncrop_anomaly_map

__all__ = ["ColourScale", "THUMBNAIL_SIDE", "overlay_thumbnail"]

THUMBNAIL_SIDE = 256
OVERLAY_ALPHA = 0.45
OUTLINE_COLOUR = (255, 255, 255)

#: CSS gradient of OpenCV's JET colour map, for the colour bar beside the galleries.
JET_CSS = "linear-gradient(to right, #00007f 0%, #0000ff 12.5%, #00ffff 37.5%, #ffff00 62.5%, #ff0000 87.5%, #7f0000 100%)"


@dataclass(frozen=True)
class ColourScale:
    """Map values from ``low`` (dark blue) to ``high`` (dark red); ``threshold`` sits in between (green).

    With anomalib's normalisation (the default) the pixel threshold is 0.5 on a 0..1 scale.
    """

    low: float
    threshold: float
    high: float

    @classmethod
    def around(cls, threshold: float) -> ColourScale:
        """0 .. 2 x threshold: the threshold in the middle of the scale (raw, unnormalised maps)."""
        return cls(0.0, threshold, 2.0 * threshold if threshold > 0 else 1.0)

    def fraction(self, value: float) -> float:
        """Position of ``value`` on the colour bar, in [0, 1]."""
        return float(np.clip((value - self.low) / ((self.high - self.low) or 1.0), 0.0, 1.0))


def _thumbnail(path: str | Path, side: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB image shrunk so that its longest side is at most ``side``.

    OpenCV decodes PNG faster than PIL; PIL reads what OpenCV cannot (e.g. some paths and formats).
    """
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if pixels is None:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))[..., ::-1]
    height, width = pixels.shape[:2]
    factor = min(1.0, side / max(height, width))
    if factor < 1:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pixels[..., ::-1])


def _outline(mask_path: str | Path, size: tuple[int, int]) -> np.ndarray | None:
    """(h, w) bool outline of the ground-truth regions at thumbnail size; ``None`` without defects."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        with Image.open(mask_path) as image:
            mask = np.asarray(image.convert("L"))
    mask = cv2.resize((mask > 0).astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    if not mask.any():
        return None
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.drawContours(canvas, contours, -1, 1, thickness=2)
    return canvas.astype(bool)


def overlay_thumbnail(
    image_path: str | Path,
    anomaly_map: np.ndarray | None,
    geometry: Geometry,
    scale: ColourScale,
    mask_path: str | Path | None = None,
    side: int = THUMBNAIL_SIDE,
) -> Image.Image:
    """The original image shrunk to ``side`` px, the map over the region the model saw, the mask outline.

    Args:
        image_path: the original image file.
        anomaly_map: (h, w) map on the model input (any resolution; it is resized into the crop region),
            or ``None`` for the image alone.
        geometry: the model's resize and center crop (see :func:`~anomalib_dinomaly.deploy.transform_geometry`).
        scale: fixed colour scale.
        mask_path: ground-truth mask file; its regions are outlined in white.
        side: longest side of the thumbnail.

    Returns:
        RGB image, at most ``side`` x ``side``.
    """
    pixels = _thumbnail(image_path, side).astype(np.float32)
    size = pixels.shape[:2]
    if anomaly_map is not None:
        # the crop box is proportional to the image, so placing the map at thumbnail size aligns it as on the original
        full = uncrop_anomaly_map(anomaly_map.astype(np.float32), size, geometry)
        inside = ~np.isnan(full)
        level = np.clip((np.nan_to_num(full) - scale.low) / ((scale.high - scale.low) or 1.0), 0.0, 1.0)
        colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
        pixels[inside] = (1 - OVERLAY_ALPHA) * pixels[inside] + OVERLAY_ALPHA * colour[inside]
    if mask_path:
        outline = _outline(mask_path, size)
        if outline is not None:
            pixels[outline] = OUTLINE_COLOUR
    return Image.fromarray(pixels.round().astype(np.uint8))
