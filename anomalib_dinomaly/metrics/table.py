"""The per-category results table: one row per category and the unweighted mean, as Markdown and CSV.

Columns: the paper's seven metrics (``pixel_AUPRO`` the paper's official AUPRO) and ``pixel_AUPRO_exact``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from anomalib_dinomaly.metrics.names import EXACT_AUPRO, PAPER_METRICS, REPORTED_METRICS

__all__ = ["MEAN", "CategoryTable", "PAPER_RESULTS"]

MEAN = "mean"

#: Column titles in the paper's style (I- image level, P- pixel level).
TITLES = {
    "image_AUROC": "I-AUROC",
    "image_AP": "I-AP",
    "image_F1Max": "I-F1max",
    "pixel_AUROC": "P-AUROC",
    "pixel_AP": "P-AP",
    "pixel_F1Max": "P-F1max",
    "pixel_AUPRO": "P-AUPRO",
    EXACT_AUPRO: "P-AUPRO (every threshold)",
}

#: The paper's unified-setting means (ViT-B, 448 -> 392), in [0, 1], for side-by-side tables.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "MVTecAD": dict(zip(PAPER_METRICS, (0.996, 0.998, 0.990, 0.984, 0.693, 0.692, 0.948), strict=True)),
    "Visa": dict(zip(PAPER_METRICS, (0.987, 0.989, 0.962, 0.987, 0.532, 0.557, 0.945), strict=True)),
    "RealIAD": dict(zip(PAPER_METRICS, (0.893, 0.868, 0.802, 0.988, 0.428, 0.471, 0.939), strict=True)),
}


def _mean(values: Iterable[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


@dataclass
class CategoryTable:
    """Metric values in [0, 1] (NaN where undefined) per category, in insertion order.

    Attributes:
        rows: ``{category: {metric: value}}`` for the metrics in :data:`REPORTED_METRICS` (rows without the
            exact AUPRO, e.g. read from an older CSV, have it as NaN).
    """

    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        """Category names in row order."""
        return list(self.rows)

    @property
    def mean(self) -> dict[str, float]:
        """Unweighted mean over categories of each metric (categories where it is undefined are skipped)."""
        return {metric: _mean(row.get(metric, math.nan) for row in self.rows.values()) for metric in REPORTED_METRICS}

    @classmethod
    def merge(cls, tables: Iterable[CategoryTable]) -> CategoryTable:
        """One table with the rows of several (e.g. one model per category).

        Raises:
            ValueError: a category appears in two tables.
        """
        rows: dict[str, dict[str, float]] = {}
        for table in tables:
            repeated = set(rows) & set(table.rows)
            if repeated:
                msg = f"Categories {sorted(repeated)} appear in more than one table."
                raise ValueError(msg)
            rows |= table.rows
        return cls(rows)

    def to_markdown(self, reference: Mapping[str, float] | None = None, reference_name: str = "paper") -> str:
        """Markdown table in percent with one decimal, the mean last; ``reference`` adds a row below it."""
        header = "| category | " + " | ".join(TITLES[metric] for metric in REPORTED_METRICS) + " |"
        lines = [header, "|---" * (len(REPORTED_METRICS) + 1) + "|"]
        body = [*self.rows.items(), (f"**{MEAN}**", self.mean)]
        if reference is not None:
            body.append((f"_{reference_name}_", reference))
        for name, row in body:
            values = [row.get(metric, math.nan) for metric in REPORTED_METRICS]
            cells = ["—" if math.isnan(value) else f"{100 * value:.1f}" for value in values]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """CSV with full precision values in [0, 1] (empty where undefined); the last row is the mean."""
        path = Path(path)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["category", *REPORTED_METRICS])
            for name, row in [*self.rows.items(), (MEAN, self.mean)]:
                values = (row.get(metric, math.nan) for metric in REPORTED_METRICS)
                writer.writerow([name, *("" if math.isnan(value) else repr(value) for value in values)])
        return path

    @classmethod
    def read_csv(cls, path: str | Path) -> CategoryTable:
        """The table written by :meth:`write_csv` (its mean row is recomputed, not read)."""
        with Path(path).open(newline="") as file:
            records = list(csv.DictReader(file))
        return cls({
            record["category"]: {metric: float(record.get(metric) or "nan") for metric in REPORTED_METRICS}
            for record in records
            if record["category"] != MEAN
        })

    def write(self, directory: str | Path, stem: str = "per_category_metrics") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.csv`` into ``directory``; returns both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        markdown = directory / f"{stem}.md"
        markdown.write_text(self.to_markdown())
        return markdown, self.write_csv(directory / f"{stem}.csv")
