"""anomalib ``Evaluator`` with the paper's seven metrics per category and their unweighted mean.

At test time every sample is assigned to its category (``batch.category`` from
:class:`~anomalib_dinomaly.data.MultiClass`, else the datamodule's single category). A category's
metrics are computed as soon as the test loader moves on to the next category, so only one category's
maps are held in memory (the unified test loader visits the categories one after another). At the
end of the test the table is logged (``image_AUROC`` ... as the mean, ``image_AUROC/<category>`` per
category) and written as ``per_category_metrics.md`` / ``.csv`` into the run's results folder.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import AnomalibMetric, Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dinomaly.metrics.functional import PAPER_METRICS, paper_metrics
from anomalib_dinomaly.metrics.table import CategoryTable

__all__ = ["CategoryEvaluator", "DEFAULT_CATEGORY"]

logger = logging.getLogger(__name__)

#: Category of samples when neither the batch nor the datamodule names one (``"all"`` means every category
#: in :class:`~anomalib_dinomaly.data.MultiClass`, so it is not used here).
DEFAULT_CATEGORY = "unnamed"


def default_category(trainer: Trainer) -> str:
    """The datamodule's category (or name) for batches that carry none, else :data:`DEFAULT_CATEGORY`."""
    datamodule = getattr(trainer, "datamodule", None)
    return getattr(datamodule, "category", "") or getattr(datamodule, "name", "") or DEFAULT_CATEGORY


def batch_categories(trainer: Trainer, batch: Any) -> list[str]:  # noqa: ANN401
    """The category of every sample: ``batch.category`` (from MultiClass), else the datamodule's for all."""
    categories = getattr(batch, "category", None)
    return list(categories) if categories else [default_category(trainer)] * len(batch.pred_score.reshape(-1))


class CategoryEvaluator(Evaluator):
    """The paper's evaluation, per category, as an anomalib ``Evaluator``.

    Pixel metrics are computed on maps and masks resized to ``eval_size`` (the official evaluation's
    256 x 256): maps bilinearly, masks by nearest neighbour, then binarised with ``> 0`` as the official
    code does. The official code computes its 256 x 256 map before the blur, our model blurs at 256 and
    hands anomalib the map at input size, so the map here is resized twice (a small smoothing); and the
    official masks are resized bilinearly before ``> 0`` (their edges grow by up to a pixel), anomalib's
    by nearest neighbour. Scores are the post-processed ones anomalib's own evaluator sees: normalisation
    is increasing, so the ranking metrics are those of the raw scores except where it clips (test scores
    outside the validation range; none with the default validation set = test set).

    Args:
        eval_size: side of the square pixel-metric maps (256); ``None`` keeps the maps' own size.
        fpr_limit: AUPRO false-positive-rate limit (0.3).
        results_stem: file name of the tables written into the trainer's ``default_root_dir``.
        val_metrics, test_metrics: further anomalib metrics over all samples (e.g. thresholded F1).
        compute_on_cpu: as in anomalib's ``Evaluator`` (applies to ``val_metrics`` / ``test_metrics``).

    Attributes:
        table: the :class:`CategoryTable` of the last test run.
    """

    def __init__(
        self,
        eval_size: int | None = 256,
        fpr_limit: float = 0.3,
        results_stem: str = "per_category_metrics",
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
        if eval_size is not None and eval_size <= 0:
            msg = f"eval_size must be positive or None, got {eval_size}."
            raise ValueError(msg)
        if not 0 < fpr_limit <= 1:
            msg = f"fpr_limit must be in (0, 1], got {fpr_limit}."
            raise ValueError(msg)
        self.eval_size = eval_size
        self.fpr_limit = fpr_limit
        self.results_stem = results_stem
        self.table: CategoryTable | None = None
        self._distributed = False
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[str, dict[str, float]] = {}
        self._kept: dict[str, dict[str, list[torch.Tensor]]] = {}  # category -> column -> batches not yet computed

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Under DDP each rank sees every ``world_size``-th sample: keep all of them, gather at the end."""
        del pl_module
        self._distributed = trainer.world_size > 1

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new table."""
        del trainer, pl_module
        self._reset()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch's scores, labels, maps and masks to their categories."""
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if batch.gt_label is None or batch.pred_score is None:
            msg = "CategoryEvaluator needs gt_label and pred_score on every test batch."
            raise ValueError(msg)
        categories = batch_categories(trainer, batch)
        size = len(categories)
        columns = {"score": batch.pred_score.reshape(-1), "label": batch.gt_label.reshape(-1)}
        if batch.anomaly_map is not None and batch.gt_mask is not None:
            columns |= self._pixel_columns(batch.anomaly_map, batch.gt_mask)
        start = 0
        for end in range(1, size + 1):
            if end == size or categories[end] != categories[start]:
                self._add(categories[start], {key: value[start:end] for key, value in columns.items()})
                start = end

    def _pixel_columns(self, anomaly_map: torch.Tensor, gt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, S, S) float maps and bool masks at the evaluation size."""
        maps = anomaly_map.reshape(anomaly_map.shape[0], 1, *anomaly_map.shape[-2:]).float()
        masks = gt_mask.reshape(gt_mask.shape[0], 1, *gt_mask.shape[-2:]).float()
        if self.eval_size is not None:
            size = (self.eval_size, self.eval_size)
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            masks = F.interpolate(masks, size=size, mode="nearest")
        return {"map": maps[:, 0], "mask": masks[:, 0] > 0}

    def _add(self, category: str, columns: dict[str, torch.Tensor]) -> None:
        if category not in self._kept:
            if not self._distributed:  # the loader moved on: compute the previous category and free its data
                self._compute_kept()
                if category in self._rows:
                    msg = (
                        f"Test samples of category {category!r} are not contiguous; CategoryEvaluator computes a "
                        "category when the loader moves on. Order the test set by category (MultiClass does)."
                    )
                    raise RuntimeError(msg)
            self._kept[category] = defaultdict(list)
        for key, value in columns.items():
            self._kept[category][key].append(value.detach().cpu())

    def _kept_columns(self) -> dict[str, dict[str, torch.Tensor]]:
        """The kept batches joined: ``{category: {column: tensor}}``."""
        return {category: {key: torch.cat(values) for key, values in columns.items()} for category, columns in self._kept.items()}

    def _compute(self, data: dict[str, dict[str, torch.Tensor]]) -> None:
        """The paper's metrics of every category in ``{category: {column: tensor}}``."""
        for category, columns in data.items():
            self._rows[category] = paper_metrics(
                columns["score"], columns["label"], columns.get("map"), columns.get("mask"), fpr_limit=self.fpr_limit
            )

    def _compute_kept(self) -> None:
        """Compute the kept categories and free their data."""
        self._compute(self._kept_columns())
        self._kept.clear()

    def _gather_and_compute(self) -> None:
        """Compute every category from the samples of all ranks (each rank gets the same table).

        As everywhere in Lightning, a ``DistributedSampler`` pads the test set to a multiple of the world size
        by repeating samples; those repeats are counted.
        """
        gathered: list[dict[str, dict[str, torch.Tensor]] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, self._kept_columns())
        self._kept.clear()
        categories = dict.fromkeys(category for part in gathered if part for category in part)  # loader order
        merged = {}
        for category in categories:
            parts = [part[category] for part in gathered if part and category in part]
            merged[category] = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        self._compute(merged)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the mean and per-category values; write the table into the results folder."""
        super().on_test_epoch_end(trainer, pl_module)
        if self._distributed:
            self._gather_and_compute()
        self._compute_kept()
        self.table = CategoryTable(dict(self._rows))
        mean = self.table.mean
        for metric in PAPER_METRICS:
            pl_module.log(metric, mean[metric])
            for category, row in self.table.rows.items():
                pl_module.log(f"{metric}/{category}", row[metric])
        if trainer.is_global_zero and self.table.rows:
            markdown, csv = self.table.write(Path(trainer.default_root_dir), self.results_stem)
            logger.info("Per-category results (%s, %s):\n%s", markdown, csv, self.table.to_markdown())
