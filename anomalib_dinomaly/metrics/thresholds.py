"""Optional per-category thresholds for a unified model, for users who know the product at inference.

The model's own post-processor keeps one global threshold (and one normalisation) for all categories:
that is what the exported model applies, with no need to know the product. Categories differ in how
high their normal scores run, so a user who knows which product an image shows can do better with
one F1-optimal threshold per category. :class:`CategoryThresholds` is a Lightning callback that fits
those on the validation set (anomalib's ``F1AdaptiveThreshold`` per category), applies them to
``pred_label`` / ``pred_mask`` at test and predict time, keeps them in the checkpoint, and writes
``category_thresholds.json`` next to the results: raw thresholds and the same thresholds in the
post-processed score space that the exported (OpenVINO / ONNX / torch) model outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data import InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dinomaly.metrics.evaluator import batch_categories

__all__ = ["CategoryThresholds", "THRESHOLDS_FILE", "apply_thresholds"]

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "category_thresholds.json"


def apply_thresholds(scores: torch.Tensor, categories: list[str], thresholds: dict[str, float]) -> torch.Tensor:
    """Labels ``scores > thresholds[category]``.

    Args:
        scores: (B,) image scores, or (B, ...) maps.
        categories: B category names.
        thresholds: threshold per category, in the same score space as ``scores``.

    Returns:
        bool tensor shaped like ``scores``.

    Raises:
        KeyError: a category without a threshold.
    """
    missing = sorted(set(categories) - set(thresholds))
    if missing:
        msg = f"No threshold for categories {missing}; known: {sorted(thresholds)}."
        raise KeyError(msg)
    limits = torch.tensor([thresholds[name] for name in categories], dtype=scores.dtype, device=scores.device)
    return scores > limits.reshape(-1, *([1] * (scores.dim() - 1)))


class CategoryThresholds(Callback):
    """F1-adaptive image (and optionally pixel) thresholds per category, fitted on the validation set.

    Add it to the trainer's callbacks (``Engine(callbacks=[CategoryThresholds()])`` or
    ``--trainer.callbacks anomalib_dinomaly.metrics.CategoryThresholds``): trainer callbacks run before the
    model's post-processor, so this one labels the raw scores and the post-processor keeps those labels.

    Args:
        pixel: also fit pixel thresholds and set ``pred_mask`` per category (holds every validation map
            once more in memory, as the post-processor's own pixel threshold does).
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
        self._fitting: dict[str, tuple[F1AdaptiveThreshold, F1AdaptiveThreshold | None]] = {}

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
        self._fitting = {}

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
        categories = batch_categories(trainer, batch)
        for category in dict.fromkeys(categories):
            index = torch.tensor([name == category for name in categories], device=batch.pred_score.device)
            sample = SimpleNamespace(
                pred_score=batch.pred_score.reshape(-1)[index],
                gt_label=batch.gt_label.reshape(-1)[index],
                anomaly_map=None if batch.anomaly_map is None else batch.anomaly_map[index],
                gt_mask=None if batch.gt_mask is None else batch.gt_mask[index],
            )
            if category not in self._fitting:
                pixel = F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False) if self.fit_pixel else None
                self._fitting[category] = (F1AdaptiveThreshold(fields=["pred_score", "gt_label"]), pixel)
            image_metric, pixel_metric = self._fitting[category]
            image_metric.update(sample)
            if pixel_metric is not None:
                pixel_metric.update(sample)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the thresholds of every category seen."""
        del trainer, pl_module
        for category, (image_metric, pixel_metric) in self._fitting.items():
            self.image_thresholds[category] = float(image_metric.compute())
            if pixel_metric is not None and pixel_metric.update_called:
                self.pixel_thresholds[category] = float(pixel_metric.compute())
        self._fitting = {}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the thresholds file."""
        self.write(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the callback order; write the thresholds file."""
        self._check_order(trainer, pl_module)
        self.write(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the callback order."""
        self._check_order(trainer, pl_module)

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
        image = self._with_global(self.image_thresholds, categories, post_processor, "image_threshold")
        batch.pred_label = apply_thresholds(batch.pred_score.reshape(-1), categories, image)
        if self.pixel_thresholds and batch.anomaly_map is not None:
            pixel = self._with_global(self.pixel_thresholds, categories, post_processor, "pixel_threshold")
            batch.pred_mask = apply_thresholds(batch.anomaly_map, categories, pixel)

    @staticmethod
    def _with_global(
        thresholds: dict[str, float],
        categories: list[str],
        post_processor: Any,  # noqa: ANN401
        attribute: str,
    ) -> dict[str, float]:
        """Categories never validated fall back to the post-processor's global raw threshold."""
        unseen = set(categories) - set(thresholds)
        if not unseen:
            return thresholds
        if not isinstance(post_processor, PostProcessor):
            msg = f"No threshold for categories {sorted(unseen)} and no global post-processor threshold."
            raise KeyError(msg)
        return thresholds | dict.fromkeys(unseen, float(getattr(post_processor, attribute)))

    def _check_order(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callbacks = trainer.callbacks
        post_processor = getattr(pl_module, "post_processor", None)
        if post_processor in callbacks and callbacks.index(self) > callbacks.index(post_processor):
            msg = (
                "CategoryThresholds runs after the model's post-processor, whose labels would win: add it to the "
                "trainer's callbacks (Engine(callbacks=[...]) or --trainer.callbacks), not to the model."
            )
            raise RuntimeError(msg)

    def normalized(self, post_processor: PostProcessor | None) -> tuple[dict[str, float], dict[str, float]]:
        """Image and pixel thresholds mapped into the post-processed score space (the exported model's output).

        Without a normalising post-processor the raw thresholds are returned.
        """
        if not isinstance(post_processor, PostProcessor) or not post_processor.enable_normalization:
            return dict(self.image_thresholds), dict(self.pixel_thresholds)
        image = torch.tensor(list(self.image_thresholds.values()), dtype=torch.float32)
        pixel = torch.tensor(list(self.pixel_thresholds.values()), dtype=torch.float32)
        device = post_processor.image_min.device
        with torch.no_grad():
            output = post_processor(InferenceBatch(pred_score=image.to(device), anomaly_map=pixel.to(device)))
        return (
            dict(zip(self.image_thresholds, output.pred_score.cpu().tolist(), strict=True)),
            dict(zip(self.pixel_thresholds, output.anomaly_map.cpu().tolist(), strict=True)),
        )

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        """Write ``{"raw": {...}, "normalized": {...}}`` thresholds as JSON into the results folder."""
        if not self.image_thresholds or not trainer.is_global_zero:
            return None
        image, pixel = self.normalized(getattr(pl_module, "post_processor", None))
        content = {
            "raw": {"image": self.image_thresholds, "pixel": self.pixel_thresholds},
            "normalized": {"image": image, "pixel": pixel},
        }
        path = Path(trainer.default_root_dir) / self.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
        logger.info("Per-category thresholds written to %s", path)
        return path
