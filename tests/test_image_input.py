"""Arrays of any common layout become what the exported model takes: (H, W, 3) float32 RGB in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from anomalib_dinomaly.image_input import to_rgb_float


def test_greyscale_rgba_and_16_bit_arrays_become_rgb_floats():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = rgb.astype(np.float32) / 255
    np.testing.assert_array_equal(to_rgb_float(rgb), expected)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_rgb_float(rgba), expected)
    grey = rgb[..., 0]
    for array in (grey, grey[..., None]):
        result = to_rgb_float(array)
        assert result.shape == (5, 7, 3) and result.dtype == np.float32
        np.testing.assert_array_equal(result, np.repeat(expected[..., :1], 3, axis=-1))
    np.testing.assert_allclose(to_rgb_float(grey.astype(np.uint16) * 257), to_rgb_float(grey), atol=1e-7)


def test_arrays_the_model_cannot_take_are_refused():
    with pytest.raises(ValueError, match=r"divide 8-bit values by 255"):
        to_rgb_float(np.full((4, 4, 3), 200.0))
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 2\)"):
        to_rgb_float(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="int32"):
        to_rgb_float(np.zeros((4, 4), np.int32))
