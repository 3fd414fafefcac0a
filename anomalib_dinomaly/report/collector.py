"""The test-report callback: collects scores and the worst cases while testing, writes ``report.html`` at the end.

Memory stays bounded on large test sets (Real-IAD: ~100k images): per category it keeps the image scores,
labels and decisions (three numbers per image, for the curves and histograms) and, for each gallery, only
the running top-k candidates with their anomaly maps shrunk to at most ``map_side`` pixels. The original
images are read again only for the few gallery entries, when the page is written.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dinomaly.deploy import Geometry, transform_geometry
from anomalib_dinomaly.metrics.evaluator import batch_categories
from anomalib_dinomaly.metrics.category_thresholds import CategoryThresholds
from anomalib_dinomaly.report.figures import Marker, histogram_svg, pr_svg, roc_svg
from anomalib_dinomaly.report.overlay import ColourScale, overlay_thumbnail
from anomalib_dinomaly.report.page import Gallery, Section, Tile, anchor, metrics_table_html, render_page
from anomalib_dinomaly.report.run_info import (
    PaperComparison,
    RunInfo,
    encoder_is_random,
    now,
    package_versions,
    paper_comparison,
)

__all__ = ["GALLERIES", "READING_GUIDE", "Example", "TestReport", "TopK"]

logger = logging.getLogger(__name__)

THUMBNAIL_THREADS = 4

#: How to read the page (also in the README).
READING_GUIDE = (
    "How to read it: the <b>ROC</b> curve shows how many defective images are caught (up) for how many good "
    "images falsely flagged (right) as the threshold moves: the closer to the top-left corner, the better. The "
    "<b>precision-recall</b> curve shows, as more defects are caught (right), which share of the flagged images "
    "really are defective (up); the dashed line is the share of defective images, what guessing achieves. The "
    "<b>histogram</b> stacks the image scores of good (blue) and defective (red) images: everything right of the "
    "threshold line is flagged, so blue right of it are false alarms (good parts scrapped) and red left of it are "
    "misses; the overlap is where no threshold can be right. The <b>galleries</b> show the worst false alarms "
    "(highest-scoring good images), the worst misses (lowest-scoring defective images) and the highest-scoring "
    "defects, with the anomaly map over the part of the image the model saw, on one colour scale for all "
    "images (green at the pixel threshold), and the ground-truth defect outlined in white; a red frame means "
    "the model flagged the image, a blue one that it passed it."
)


@dataclass
class Example:
    """One image kept for a gallery.

    Attributes:
        score: image score (post-processed, as the model outputs it).
        label: ground truth, 1 = defective.
        flagged: the model's decision (``pred_label``).
        image_path: the original image file.
        mask_path: its ground-truth mask file, if any.
        anomaly_map: (h, w) float16 map on the model input, shrunk.
    """

    score: float
    label: int
    flagged: bool
    image_path: str
    mask_path: str | None
    anomaly_map: np.ndarray | None


class TopK:
    """The ``capacity`` examples with the highest (``largest``) or lowest scores seen so far."""

    def __init__(self, capacity: int, largest: bool) -> None:
        self.capacity = capacity
        self.largest = largest
        self._heap: list[tuple[float, int, Example]] = []
        self._pushed = 0  # tie-breaker: earlier examples first (a plain int, so that records pickle for DDP)

    def _key(self, score: float) -> float:
        return score if self.largest else -score

    def accepts(self, score: float) -> bool:
        """Whether an example with ``score`` would be kept now."""
        return len(self._heap) < self.capacity or self._key(score) > self._heap[0][0]

    def push(self, example: Example) -> None:
        """Keep ``example`` if it is among the ``capacity`` best so far."""
        if not self.accepts(example.score):
            return
        self._pushed += 1
        item = (self._key(example.score), -self._pushed, example)
        if len(self._heap) < self.capacity:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def examples(self) -> list[Example]:
        """Kept examples, most extreme first."""
        return [item[2] for item in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]


#: Galleries per category: key -> (title, description, ground-truth label, keep the highest scores).
GALLERIES: dict[str, tuple[str, str, int, bool]] = {
    "false_alarms": ("Worst false alarms", "Good images with the highest scores.", 0, True),
    "misses": ("Worst misses", "Defective images with the lowest scores.", 1, False),
    "top_defects": ("Highest-scoring defects", "Defective images with the highest scores.", 1, True),
}


@dataclass
class CategoryRecord:
    """Everything kept about one category's test images."""

    capacity: int
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    flagged: list[np.ndarray] = field(default_factory=list)
    galleries: dict[str, TopK] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.galleries:
            self.galleries = {key: TopK(self.capacity, largest) for key, (_, _, _, largest) in GALLERIES.items()}

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) scores, (N,) labels, (N,) decisions."""
        return (
            np.concatenate(self.scores) if self.scores else np.empty(0, np.float32),
            np.concatenate(self.labels) if self.labels else np.empty(0, np.int64),
            np.concatenate(self.flagged) if self.flagged else np.empty(0, bool),
        )

    def merge(self, other: CategoryRecord) -> None:
        """Add another record of the same category (another rank's share)."""
        self.scores += other.scores
        self.labels += other.labels
        self.flagged += other.flagged
        for key, top in other.galleries.items():
            for example in top.examples():
                self.galleries[key].push(example)


def _shrink(anomaly_map: torch.Tensor, side: int) -> np.ndarray:
    """(H, W) map -> (h, w) float16 with max(h, w) <= side (area averaging)."""
    height, width = anomaly_map.shape[-2:]
    factor = side / max(height, width)
    anomaly_map = anomaly_map.reshape(1, 1, height, width).float()
    if factor < 1:
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        anomaly_map = F.interpolate(anomaly_map, size=size, mode="area")
    return anomaly_map[0, 0].cpu().numpy().astype(np.float16)


class TestReport(Callback):
    """Writes ``report.html`` (and its images in ``report_files/``) into the results folder after every test.

    Added by :meth:`Dinomaly.configure_callbacks`. The page holds the run's facts, the per-category metrics
    of the model's :class:`~anomalib_dinomaly.metrics.CategoryEvaluator` beside the paper's, and per
    category the ROC and precision-recall curves, the score histogram with the threshold(s), the
    false-alarm and miss counts there, and galleries of the worst cases with their anomaly maps.

    Args:
        gallery_size: images per gallery and category.
        map_side: longest side of the kept anomaly maps.
        file_name: name of the page in the results folder.

    Attributes:
        path: the page written by the last test run.
        seconds: time spent writing it.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, gallery_size: int = 6, map_side: int = 128, file_name: str = "report.html") -> None:
        super().__init__()
        if gallery_size < 1 or map_side < 1:
            msg = f"gallery_size and map_side must be positive, got {gallery_size} and {map_side}."
            raise ValueError(msg)
        self.gallery_size = gallery_size
        self.map_side = map_side
        self.file_name = file_name
        self.path: Path | None = None
        self.seconds = 0.0
        self._records: dict[str, CategoryRecord] = {}
        self._checkpoint_step: int | None = None

    @property
    def state_key(self) -> str:
        """One instance per trainer."""
        return type(self).__qualname__

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Remember how many steps the tested checkpoint was trained for."""
        del trainer, pl_module
        self._checkpoint_step = checkpoint.get("global_step")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new report."""
        del trainer, pl_module
        self._records = {}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch's scores and decisions; keep the images that enter a gallery, with their maps."""
        del pl_module, outputs, batch_idx, dataloader_idx
        if batch.pred_score is None or batch.gt_label is None:
            return
        scores = batch.pred_score.detach().reshape(-1).float().cpu().numpy()
        labels = batch.gt_label.detach().reshape(-1).long().cpu().numpy()
        flagged = (
            batch.pred_label.detach().reshape(-1).bool().cpu().numpy()
            if batch.pred_label is not None
            else np.zeros_like(labels, dtype=bool)
        )
        categories = np.asarray(batch_categories(trainer, batch))
        image_paths = list(batch.image_path or [""] * len(scores))
        mask_paths = list(getattr(batch, "mask_path", None) or [""] * len(scores))
        for category in dict.fromkeys(categories.tolist()):
            index = np.flatnonzero(categories == category)
            record = self._records.setdefault(category, CategoryRecord(self.gallery_size))
            record.scores.append(scores[index])
            record.labels.append(labels[index])
            record.flagged.append(flagged[index])
            for i in index:
                for key, (_, _, label, _) in GALLERIES.items():
                    top = record.galleries[key]
                    if labels[i] != label or not top.accepts(float(scores[i])):
                        continue
                    anomaly_map = None if batch.anomaly_map is None else _shrink(batch.anomaly_map[i], self.map_side)
                    mask_path = str(mask_paths[i] or "")  # anomalib collates a missing mask as "None" in mixed batches
                    top.push(
                        Example(
                            float(scores[i]),
                            int(labels[i]),
                            bool(flagged[i]),
                            str(image_paths[i]),
                            mask_path if mask_path and Path(mask_path).is_file() else None,
                            anomaly_map,
                        )
                    )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Under DDP, bring every rank's records together (each rank tested a share of the images)."""
        del pl_module
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        gathered: list[dict[str, CategoryRecord] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, self._records)
        merged: dict[str, CategoryRecord] = {}
        for part in gathered:
            for category, record in (part or {}).items():
                if category in merged:
                    merged[category].merge(record)
                else:
                    merged[category] = record
        self._records = merged

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the page (rank 0)."""
        if not trainer.is_global_zero or not self._records:
            return
        started = time.perf_counter()
        self.path = self.write(Path(trainer.default_root_dir), trainer, pl_module)
        self.seconds = time.perf_counter() - started
        self._records = {}
        logger.info("Test report written to %s (%.2f s)", self.path, self.seconds)

    # -- the page -------------------------------------------------------------------------------------

    def write(self, directory: Path, trainer: Trainer, pl_module: LightningModule) -> Path:
        """Write ``report.html`` and ``report_files/`` into ``directory``; returns the page's path."""
        post_processor = getattr(pl_module, "post_processor", None)
        image_threshold, scale = _thresholds(post_processor)
        category_thresholds = _category_thresholds(trainer, post_processor)
        geometry = _geometry(pl_module)
        evaluator = getattr(pl_module, "evaluator", None)
        table = getattr(evaluator, "table", None)
        rows = dict(table.rows) if table is not None else {}

        info = self._run_info(trainer, pl_module, geometry, image_threshold, category_thresholds)
        files = directory / (Path(self.file_name).stem + "_files")
        shutil.rmtree(files, ignore_errors=True)  # the thumbnails of an earlier test into the same folder
        files.mkdir(parents=True)
        pending: list[tuple[Gallery, Tile, Future]] = []
        # decoding the original images dominates; OpenCV releases the GIL, so threads overlap it
        with ThreadPoolExecutor(max_workers=min(THUMBNAIL_THREADS, os.cpu_count() or 1)) as pool:
            sections = [
                self._section(
                    name, record, rows.get(name, {}), image_threshold, category_thresholds.get(name), geometry, scale,
                    files, pool, pending,
                )
                for name, record in self._records.items()
            ]  # fmt: skip
            for gallery, tile, future in pending:
                if not future.result():
                    gallery.tiles.remove(tile)
        table_html = metrics_table_html(rows, self._comparison(trainer, pl_module, list(rows or self._records)))
        title = f"Dinomaly test report: {_dataset_name(trainer)} {_category(trainer)}".strip()
        page = render_page(title, info, sections, table_html, scale, READING_GUIDE)
        path = directory / self.file_name
        path.write_text(page, encoding="utf-8")
        return path

    @staticmethod
    def _comparison(trainer: Trainer, pl_module: LightningModule, categories: list[str]) -> PaperComparison | None:
        """The paper's figures for the run's data set, if the paper reports it."""
        from anomalib_dinomaly.data.multi_class import UNIFIED, known_categories  # the data package is heavier

        dataset = _dataset_name(trainer)
        hparams = getattr(pl_module, "hparams", {})
        return paper_comparison(
            dataset,
            categories,
            known_categories(dataset) if dataset else None,
            unified=_category(trainer) == UNIFIED,
            encoder_name=hparams.get("encoder_name"),
        )

    def _run_info(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        geometry: Geometry,
        image_threshold: float,
        category_thresholds: dict[str, float],
    ) -> RunInfo:
        hparams = getattr(pl_module, "hparams", {})
        encoder = getattr(getattr(pl_module, "model", None), "encoder", None)
        info = RunInfo(random_weights=encoder is not None and encoder_is_random(encoder))
        info.add("model", f"{type(pl_module).__name__} ({type(pl_module).__module__})")
        if encoder is not None:
            weights = "RANDOM weights" if info.random_weights else "pretrained weights"
            shape = f"width {getattr(encoder, 'embed_dim', '?')}, {getattr(encoder, 'depth', '?')} blocks"
            info.add("encoder", f"{hparams.get('encoder_name', type(encoder).__name__)} ({shape}, {weights})")
        crop = "none" if geometry.crop is None else "x".join(map(str, geometry.crop))
        resize = "original size" if geometry.resize is None else "x".join(map(str, geometry.resize))
        info.add("image geometry", f"resize {resize}, center crop {crop} (the model input)")
        steps = self._checkpoint_step if self._checkpoint_step is not None else trainer.global_step
        info.add("training steps", steps if steps else "unknown (no training in this process, no checkpoint step)")
        info.add("data", _data_description(trainer))
        counts = ", ".join(f"{name} {sum(len(s) for s in record.scores)}" for name, record in self._records.items())
        info.add("test images per category", counts)
        threshold = f"{image_threshold:.4g} (image score, as output by the model)"
        if category_thresholds:
            threshold += "; per-category thresholds (CategoryThresholds) decide the labels"
        info.add("threshold", threshold)
        info.add("date", now())
        info.add("packages", package_versions())
        return info

    def _section(
        self,
        name: str,
        record: CategoryRecord,
        metrics: dict[str, float],
        image_threshold: float,
        category_threshold: float | None,
        geometry: Geometry,
        scale: ColourScale,
        files: Path,
        pool: ThreadPoolExecutor,
        pending: list[tuple[Gallery, Tile, Future]],
    ) -> Section:
        """One category's section; its thumbnails are rendered by ``pool`` (``pending`` collects them)."""
        scores, labels, flagged = record.arrays()
        good, defective = int((labels == 0).sum()), int((labels == 1).sum())
        false_alarms = int((flagged & (labels == 0)).sum())
        misses = int((~flagged & (labels == 1)).sum())
        decided = f"category threshold {category_threshold:.4g}" if category_threshold is not None else (
            f"threshold {image_threshold:.4g}"
        )
        counts = (
            f"{scores.size} test images: {good} good, {defective} defective. At the {decided}: "
            f"{false_alarms} false alarms (of {good} good), {misses} misses (of {defective} defective)."
        )
        markers = [Marker(image_threshold, f"threshold {image_threshold:.3g}", dashed=category_threshold is not None)]
        if category_threshold is not None:
            markers.append(Marker(category_threshold, f"category threshold {category_threshold:.3g}", colour="#7b2cbf"))
        figures = [
            roc_svg(scores, labels, metrics.get("image_AUROC")),
            pr_svg(scores, labels, metrics.get("image_AP")),
            histogram_svg(scores, labels, markers),
        ]
        folder = files / anchor(name)
        folder.mkdir(parents=True, exist_ok=True)
        galleries, shown = [], set()
        for key, (title, description, _, _) in GALLERIES.items():
            gallery = Gallery(title, description, empty="no such images in this category, or all shown above")
            examples = [example for example in record.galleries[key].examples() if example.image_path not in shown]
            shown.update(example.image_path for example in examples)
            for number, example in enumerate(examples):
                target = folder / f"{key}_{number}.jpg"
                truth = "defective" if example.label else "good"
                decision = "flagged (NG)" if example.flagged else "passed (OK)"
                tile = Tile(
                    f"{files.name}/{folder.name}/{target.name}",
                    [f"score {example.score:.3f} · {truth} · {decision}", _short(example.image_path)],
                    example.flagged,
                )
                gallery.tiles.append(tile)
                pending.append((gallery, tile, pool.submit(_save_thumbnail, example, geometry, scale, target)))
            galleries.append(gallery)
        return Section(name, counts, figures, galleries)


def _save_thumbnail(example: Example, geometry: Geometry, scale: ColourScale, target: Path) -> bool:
    """Write the example's overlay thumbnail as JPEG; ``False`` (and a warning) if its image cannot be read."""
    try:
        thumbnail = overlay_thumbnail(example.image_path, example.anomaly_map, geometry, scale, example.mask_path)
        thumbnail.save(target, quality=85)
    except OSError as error:  # e.g. the file moved since the test: leave it out of the page, keep the rest
        logger.warning("Report: cannot read %s (%s); left out of the gallery.", example.image_path, error)
        return False
    return True


def _geometry(pl_module: LightningModule) -> Geometry:
    """The model's resize and center crop; none (the map covers the whole image) if they cannot be read."""
    transform = getattr(getattr(pl_module, "pre_processor", None), "transform", None)
    if transform is None:
        return Geometry(None, None)
    try:
        return transform_geometry(transform)
    except ValueError as error:
        logger.warning("Report: %s Maps are drawn over the whole image.", error)
        return Geometry(None, None)


def _short(path: str) -> str:
    """The last two parts of a path (defect type and file name)."""
    return "/".join(Path(path).parts[-2:])


def _thresholds(post_processor: Any) -> tuple[float, ColourScale]:  # noqa: ANN401
    """The global image threshold and the map colour scale, in the space of the model's outputs."""
    if not isinstance(post_processor, PostProcessor):
        return 0.5, ColourScale(0.0, 0.5, 1.0)
    if post_processor.enable_normalization:
        pixel = float(post_processor.normalized_pixel_threshold)
        return float(post_processor.normalized_image_threshold), ColourScale(0.0, pixel, 1.0)
    image, pixel = float(post_processor.image_threshold), float(post_processor.pixel_threshold)
    return image, ColourScale.around(pixel if np.isfinite(pixel) else 0.5)


def _category_thresholds(trainer: Trainer, post_processor: Any) -> dict[str, float]:  # noqa: ANN401
    """Per-category image thresholds in output space, when a CategoryThresholds callback fitted some."""
    for callback in trainer.callbacks:
        if isinstance(callback, CategoryThresholds) and callback.image_thresholds:
            return callback.normalized(post_processor)[0]
    return {}


def _dataset_name(trainer: Trainer) -> str:
    return str(getattr(getattr(trainer, "datamodule", None), "name", "") or "")


def _category(trainer: Trainer) -> str:
    return str(getattr(getattr(trainer, "datamodule", None), "category", "") or "")


def _data_description(trainer: Trainer) -> str:
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None:
        return ""
    children = getattr(datamodule, "datamodules", None)
    parts = [f"{_dataset_name(trainer)} {_category(trainer)}".strip()]
    for child in children.values() if isinstance(children, dict) else [datamodule]:
        root = getattr(child, "root", None)
        if root is not None:
            parts.append(f"{type(child).__name__} {getattr(child, 'category', '')} at {root}")
    return "; ".join(parts)
