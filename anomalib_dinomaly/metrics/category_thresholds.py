"""Optional per-category thresholds for a unified model, for users who know the product at inference.

The model's own post-processor keeps one global threshold (and one normalisation) for all categories:
that is what the exported model applies, with no need to know the product. Categories differ in how
high their normal scores run, so a user who knows which product an image shows can do better with
one F1-optimal threshold per category. :class:`CategoryThresholds` is a Lightning callback that fits
those on the validation set (:mod:`.threshold_fitting`), applies them to ``pred_label`` / ``pred_mask``
at test and predict time (:mod:`.threshold_labels`), keeps them in the checkpoint, and writes
``category_thresholds.json`` next to the results (:mod:`.threshold_file`): raw thresholds and the same
thresholds in the post-processed score space that the exported (OpenVINO / ONNX / torch) model outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dinomaly.metrics.callback_order import check_runs_before_post_processor
from anomalib_dinomaly.metrics.evaluator import batch_categories
from anomalib_dinomaly.metrics.threshold_file import THRESHOLDS_FILE, write_thresholds
from anomalib_dinomaly.metrics.threshold_fitting import CategoryThresholdFitter
from anomalib_dinomaly.metrics.threshold_labels import apply_thresholds, with_global_fallback
from anomalib_dinomaly.metrics.threshold_normalisation import normalized_thresholds

__all__ = ["CategoryThresholds"]


class CategoryThresholds(Callback):
    """F1-adaptive image (and optionally pixel) thresholds per category, fitted on the validation set.

    Add it to the trainer's callbacks (``Engine(callbacks=[CategoryThresholds()])`` or
    ``--trainer.callbacks anomalib_dinomaly.metrics.CategoryThresholds``): trainer callbacks run before the
    model's post-processor, so this one labels the raw scores and the post-processor keeps those labels.

    Args:
        pixel: also fit pixel thresholds and set ``pred_mask`` per category (a fixed 16 MB histogram per
            category, see :mod:`.histogram_threshold`).
        file_name: name of the JSON file written into the results folder.

    Attributes:
        image_thresholds, pixel_thresholds: raw-score thresholds ``{category: value}``.
    """

    def __init__(self, pixel: bool = False, file_name: str = THRESHOLDS_FILE) -> None:
        super().__init__()
        self.fit_pixel = pixel
        self.file_name = file_name
        self.image_thresholds: dict[str, float] = {}
        self.pixel_thresholds: dict[str, float] = {}
        self._fitter = CategoryThresholdFitter(pixel)

    @property
    def state_key(self) -> str:
        """One instance per trainer: the key does not depend on the arguments."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        """Thresholds, saved in the checkpoint."""
        return {"image": dict(self.image_thresholds), "pixel": dict(self.pixel_thresholds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Thresholds from a checkpoint."""
        self.image_thresholds = dict(state_dict.get("image", {}))
        self.pixel_thresholds = dict(state_dict.get("pixel", {}))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start fitting anew."""
        del trainer, pl_module
        self._fitter = CategoryThresholdFitter(self.fit_pixel)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect the batch's raw scores (and maps) per category."""
        del pl_module, outputs, batch_idx, dataloader_idx
        self._fitter.update(batch_categories(trainer, batch), batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the thresholds of every category seen."""
        del trainer, pl_module
        image, pixel = self._fitter.compute()
        self.image_thresholds |= image
        self.pixel_thresholds |= pixel

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the thresholds file."""
        self.write(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the callback order; write the thresholds file."""
        check_runs_before_post_processor(self, trainer, pl_module)
        self.write(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the callback order."""
        check_runs_before_post_processor(self, trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Label the batch with its categories' thresholds (before the post-processor normalises it)."""
        del outputs, batch_idx, dataloader_idx
        self._label(trainer, pl_module, batch)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Label the batch with its categories' thresholds (before the post-processor normalises it)."""
        del batch_idx, dataloader_idx
        self._label(trainer, pl_module, outputs if outputs is not None else batch)

    def _label(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> None:  # noqa: ANN401
        if not self.image_thresholds or batch.pred_score is None:
            return
        categories = batch_categories(trainer, batch)
        post_processor = getattr(pl_module, "post_processor", None)
        image = with_global_fallback(self.image_thresholds, categories, post_processor, "image_threshold")
        batch.pred_label = apply_thresholds(batch.pred_score.reshape(-1), categories, image)
        if self.pixel_thresholds and batch.anomaly_map is not None:
            pixel = with_global_fallback(self.pixel_thresholds, categories, post_processor, "pixel_threshold")
            batch.pred_mask = apply_thresholds(batch.anomaly_map, categories, pixel)

    def normalized(self, post_processor: Any) -> tuple[dict[str, float], dict[str, float]]:  # noqa: ANN401
        """Image and pixel thresholds mapped into the post-processed score space (the exported model's output)."""
        return normalized_thresholds(self.image_thresholds, self.pixel_thresholds, post_processor)

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Write ``{"raw": {...}, "normalized": {...}}`` thresholds as JSON into the results folder (rank 0)."""
        if not self.image_thresholds or not trainer.is_global_zero:
            return None
        path = Path(trainer.default_root_dir) / self.file_name
        return write_thresholds(path, self.image_thresholds, self.pixel_thresholds, getattr(pl_module, "post_processor", None))
