"""A warning when images passed to ``model(...)`` are not floats in [0, 1], the range the pre-processor expects.

The module's pre-processor resizes, crops and applies the ImageNet normalisation itself. A batch in 0..255, or
one already normalised, is otherwise scored without any error, and the scores mean nothing.
"""

from __future__ import annotations

import warnings

import torch

#: Slack for interpolation overshoot and rounding in images that are really in [0, 1].
TOLERANCE = 1e-3


class InputRangeWarning(UserWarning):
    """Images outside [0, 1] were passed to the model."""


class InputRangeCheck:
    """Checks the batches given to ``model(...)``; warns once per model, refuses integer tensors."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, images: torch.Tensor) -> None:
        """Check a (B, C, H, W) batch.

        Raises:
            TypeError: an integer tensor (e.g. uint8 straight from an image file).
        """
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return
        if not images.is_floating_point():
            msg = (
                f"model(...) takes float images in [0, 1]; got a {images.dtype} tensor. "
                "Pass images.float() / 255 for 8-bit pixels."
            )
            raise TypeError(msg)
        if self.warned or images.numel() == 0:
            return
        low, high = (float(value) for value in torch.aminmax(images.detach()))
        if low < -TOLERANCE or high > 1 + TOLERANCE:
            self.warned = True
            hint = "divide 8-bit pixel values by 255" if high > 2 else "do not normalise them yourself"
            warnings.warn(
                f"model(...) got images with values in [{low:.3g}, {high:.3g}], but it expects floats in [0, 1] "
                f"(its pre-processor resizes and normalises them): {hint}. Scores of such input are meaningless. "
                "(Warned once per model.)",
                InputRangeWarning,
                stacklevel=3,
            )
