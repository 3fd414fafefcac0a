"""anomalib ``Evaluator`` with the paper's seven metrics per category and their unweighted mean.

At test time every sample is assigned to its category (``batch.category`` from
:class:`~anomalib_dinomaly.data.MultiClass`, else the datamodule's single category). Only what the metrics
need is kept (:class:`~anomalib_dinomaly.metrics.accumulator.CategoryAccumulator`), and only until the
category is complete: the unified test loader visits the categories one after another, so a category is
computed as soon as the loader moves on, in one process and under DDP, and memory is bounded by the
largest category at the evaluation size, not by the test set. At the end of the test the table is logged
(``image_AUROC`` ... as the mean, ``image_AUROC/<category>`` per category), kept as :attr:`table` and
written as ``per_category_metrics.md`` / ``.csv`` into the run's results folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import AnomalibMetric, Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dinomaly.metrics.accumulator import CategoryAccumulator
from anomalib_dinomaly.metrics.names import REPORTED_METRICS
from anomalib_dinomaly.metrics.table import CategoryTable

__all__ = ["DEFAULT_CATEGORY", "CategoryEvaluator"]

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

    Under DDP each rank holds its share of the open categories; when no rank's batch holds a category any
    more, rank 0 gathers and computes it and every rank gets its row. A ``DistributedSampler`` pads the test
    set by repeating its first samples at the end: with several categories those repeats arrive after their
    category is complete and are left out, so the table is the one of a single process (with one category
    they are counted, as Lightning's own metrics count them).

    Args:
        eval_size: side of the square pixel-metric maps (256); ``None`` keeps the maps' own size.
        fpr_limit: AUPRO false-positive-rate limit (0.3).
        results_stem: file name of the tables written into the trainer's ``default_root_dir``.
        val_metrics, test_metrics: further anomalib metrics over all samples (e.g. thresholded F1).
        compute_on_cpu: as in anomalib's ``Evaluator`` (applies to ``val_metrics`` / ``test_metrics``).

    Attributes:
        table: the :class:`CategoryTable` of the last test run (``table.rows[category][metric]``,
            ``table.mean[metric]``), set at the end of the test epoch; ``None`` before.
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
        self._world_size = 1
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[str, dict[str, float]] = {}
        self._open: dict[str, CategoryAccumulator] = {}  # categories whose samples may still come, in loader order
        self._left: set[str] = set()  # categories this process has moved on from
        self._repeats = 0  # samples of those seen again (DDP padding)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note whether ranks have to pool their categories."""
        del pl_module
        self._world_size = trainer.world_size

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
        """Add the batch's scores, labels, maps and masks to their categories; compute the completed ones."""
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if batch.gt_label is None or batch.pred_score is None:
            msg = "CategoryEvaluator needs gt_label and pred_score on every test batch."
            raise ValueError(msg)
        categories = batch_categories(trainer, batch)
        size = len(categories)
        columns = {"scores": batch.pred_score.reshape(-1), "labels": batch.gt_label.reshape(-1)}
        if batch.anomaly_map is not None and batch.gt_mask is not None:
            columns |= self._pixel_columns(batch.anomaly_map, batch.gt_mask)
        start, added = 0, set()
        for end in range(1, size + 1):
            if end == size or categories[end] != categories[start]:
                if self._add(categories[start], {key: value[start:end] for key, value in columns.items()}):
                    added.add(categories[start])
                start = end
        if self._world_size > 1:
            self._complete_distributed(added)

    def _pixel_columns(self, anomaly_map: torch.Tensor, gt_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, S, S) float maps and bool masks at the evaluation size."""
        maps = anomaly_map.reshape(anomaly_map.shape[0], 1, *anomaly_map.shape[-2:]).float()
        masks = gt_mask.reshape(gt_mask.shape[0], 1, *gt_mask.shape[-2:]).float()
        size = (self.eval_size, self.eval_size)
        if self.eval_size is not None and maps.shape[-2:] != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        if self.eval_size is not None and masks.shape[-2:] != size:
            masks = F.interpolate(masks, size=size, mode="nearest")
        return {"maps": maps[:, 0], "masks": masks[:, 0] > 0}

    def _add(self, category: str, columns: dict[str, torch.Tensor]) -> bool:
        """Add samples to their open category; ``False`` for the DDP sampler's repeats, which are left out."""
        if category in self._left or category in self._rows:
            if self._world_size > 1:  # the sampler's padding: at most world_size - 1 samples in all
                self._repeats += len(columns["scores"])
                if self._repeats < self._world_size:
                    return False
            msg = (
                f"Test samples of category {category!r} are not contiguous; CategoryEvaluator computes a "
                "category when the loader moves on. Order the test set by category (MultiClass does)."
            )
            raise RuntimeError(msg)
        if category not in self._open:
            self._left.update(self._open)
            if self._world_size == 1:  # the loader moved on: compute the previous category and free its data
                self._complete(list(self._open))
            self._open[category] = CategoryAccumulator(self.fpr_limit)
        self._open[category].add(columns["scores"], columns["labels"], columns.get("maps"), columns.get("masks"))
        return True

    def _complete(self, categories: list[str]) -> None:
        """Compute the open ``categories`` of this process and free their data."""
        for category in categories:
            self._rows[category] = self._open.pop(category).compute()

    def _complete_distributed(self, current: set[str] | None) -> None:
        """Compute (on rank 0) every category open on some rank that no rank's batch added to; share the rows.

        ``current`` is the categories this rank's batch added to; ``None`` at the end of the test: all are
        complete. Every rank calls this after every batch, so the collective calls match.
        """
        dist = torch.distributed
        views: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(views, (list(self._open), sorted(current or ())))
        still_open = {name for _, batch in views for name in batch} if current is not None else set()
        finished = [name for opened, _ in views for name in opened if name not in still_open]
        for category in dict.fromkeys(finished):  # loader order, each once
            accumulator = self._open.pop(category, None)
            state = accumulator.state() if accumulator is not None else None
            del accumulator
            states: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(state, states, dst=0)
            row = [None]
            if states is not None:
                merged = CategoryAccumulator.merge((part for part in states if part is not None), self.fpr_limit)
                del states
                row = [merged.compute()]
                del merged
            dist.broadcast_object_list(row, src=0)
            self._rows[category] = row[0]

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the mean and per-category values; keep the table in :attr:`table`; write it into the results folder."""
        super().on_test_epoch_end(trainer, pl_module)
        if self._world_size > 1:
            self._complete_distributed(None)
        self._complete(list(self._open))
        self.table = CategoryTable(dict(self._rows))
        mean = self.table.mean
        for metric in REPORTED_METRICS:
            pl_module.log(metric, mean[metric])
            for category, row in self.table.rows.items():
                pl_module.log(f"{metric}/{category}", row[metric])
        if trainer.is_global_zero and self.table.rows:
            markdown, csv = self.table.write(Path(trainer.default_root_dir), self.results_stem)
            logger.info("Per-category results (%s, %s):\n%s", markdown, csv, self.table.to_markdown())
