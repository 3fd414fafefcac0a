"""The report for unlabeled deployment images (``examples/infer_folder.py``): score histogram, images by score.

It reads the folder inference's ``predictions.csv`` (columns ``image``, ``score``, ``label`` and, if
present, ``overlay``: the heat-map overlay on the original image, relative to the CSV's folder; rows whose
``status`` is not ``ok`` are images that could not be scored and are left out) and writes
``report.html`` beside it, with thumbnails of the highest-scoring overlays in ``report_files/``. Only
``limit`` images are shown, whatever the folder's size; the CSV lists them all.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from anomalib_dinomaly.report.figures import Marker, histogram_svg
from anomalib_dinomaly.report.overlay import THUMBNAIL_SIDE, ColourScale
from anomalib_dinomaly.report.page import Gallery, Section, Tile, render_page
from anomalib_dinomaly.report.run_info import RunInfo, now, package_versions

__all__ = ["write_folder_report"]

ANOMALOUS = {"anomalous", "1", "true", "ng"}


def write_folder_report(
    predictions_csv: str | Path,
    threshold: float = 0.5,
    limit: int = 48,
    model: str | Path | None = None,
    file_name: str = "report.html",
) -> Path:
    """Write ``report.html`` beside ``predictions_csv``: the images sorted by score, highest first.

    Args:
        predictions_csv: the CSV written by the folder inference.
        threshold: the image threshold in the scores' space (0.5 for anomalib's normalised outputs).
        limit: how many of the highest-scoring images to show.
        model: the model file, named on the page.
        file_name: name of the page.

    Returns:
        The page's path.

    Raises:
        ValueError: the CSV has no ``score`` column or no rows.
    """
    predictions_csv = Path(predictions_csv)
    with predictions_csv.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("status", "ok") == "ok"]
    if not rows or "score" not in rows[0]:
        msg = f"{predictions_csv} has no rows or no 'score' column; expected the CSV of examples/infer_folder.py."
        raise ValueError(msg)
    directory = predictions_csv.parent
    scores = np.array([float(row["score"]) for row in rows], dtype=np.float32)
    flagged = np.array([row.get("label", "").strip().lower() in ANOMALOUS for row in rows])
    order = np.argsort(-scores, kind="stable")

    files = directory / (Path(file_name).stem + "_files")
    shutil.rmtree(files, ignore_errors=True)  # thumbnails of an earlier run into the same folder
    files.mkdir(parents=True)
    gallery = Gallery(
        f"The {min(limit, len(rows))} highest-scoring images",
        f"Sorted by score; all {len(rows)} are in {predictions_csv.name}.",
        empty="no overlays were written",
    )
    for rank, index in enumerate(order[:limit]):
        row = rows[index]
        overlay = row.get("overlay")
        if not overlay or not (directory / overlay).is_file():
            continue
        with Image.open(directory / overlay) as image:
            thumbnail = image.convert("RGB")
            thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
            target = files / f"{rank:04d}.jpg"
            thumbnail.save(target, quality=85)
        decision = "flagged (NG)" if flagged[index] else "passed (OK)"
        gallery.tiles.append(
            Tile(
                f"{files.name}/{target.name}",
                [f"#{rank + 1} · score {scores[index]:.3f} · {decision}", row.get("image", "")],
                bool(flagged[index]),
            )
        )
    counts = (
        f"{len(rows)} images: {int(flagged.sum())} flagged (NG), {int((~flagged).sum())} passed (OK) at threshold "
        f"{threshold:.3g}."
    )
    histogram = histogram_svg(scores, None, [Marker(threshold, f"threshold {threshold:.3g}")])
    info = RunInfo()
    info.add("model", model)
    info.add("images", f"{directory.resolve()} ({len(rows)} scored)")
    info.add("threshold", f"{threshold:.4g} (image score, as output by the model)")
    info.add("date", now())
    info.add("packages", package_versions())
    guide = (
        "The histogram counts images by score; everything right of the threshold line is flagged. Below, the "
        "highest-scoring images with the anomaly map over the part the model saw (colours fixed by the threshold: "
        "green at the threshold, red above), a red frame for flagged images and a blue one for passed ones."
    )
    page = render_page(
        "Dinomaly folder report",
        info,
        [Section("scored images", counts, [histogram], [gallery])],
        scale=ColourScale(0.0, 0.5, 1.0),  # infer_folder.py colours normalised maps 0..1, pixel threshold 0.5
        reading_guide=guide,
    )
    path = directory / file_name
    path.write_text(page, encoding="utf-8")
    return path
