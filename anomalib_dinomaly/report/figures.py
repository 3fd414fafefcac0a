"""Plots of the report as small hand-written SVG: ROC and precision-recall curves, score histograms.

Hand-written rather than matplotlib: importing matplotlib and drawing three figures per category would
cost more than the rest of the report for a 30-category run, and these plots need nothing beyond lines,
rectangles and a few labels. Curves are thinned to at most ``MAX_POINTS`` vertices, so a figure's size
does not grow with the number of test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

__all__ = ["Marker", "histogram_svg", "pr_curve", "pr_svg", "roc_curve", "roc_svg"]

MAX_POINTS = 400
WIDTH, HEIGHT = 300, 210
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 38, 10, 22, 30
GOOD_COLOUR, DEFECT_COLOUR, CURVE_COLOUR = "#3b78c4", "#d4462f", "#1c5f9e"


@dataclass(frozen=True)
class Marker:
    """A vertical line on a histogram: a threshold, with its legend text and stroke."""

    value: float
    text: str
    colour: str = "#222"
    dashed: bool = False


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest score first."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order].astype(bool)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    return np.cumsum(labels)[last_of_tie], np.cumsum(~labels)[last_of_tie]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds, from (0, 0) to (1, 1).

    Args:
        scores: (N,) image scores.
        labels: (N,) ground truth, 1 = defective.

    Returns:
        (fpr, tpr), each (M,); empty when either class is missing.
    """
    positives, negatives = int(labels.sum()), int(labels.size - labels.sum())
    if not positives or not negatives:
        return np.empty(0), np.empty(0)
    tp, fp = _ranked(scores, labels)
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision over all thresholds, highest threshold first (recall rising).

    Args:
        scores: (N,) image scores.
        labels: (N,) ground truth, 1 = defective.

    Returns:
        (recall, precision), each (M,); empty without defective images.
    """
    positives = int(labels.sum())
    if not positives:
        return np.empty(0), np.empty(0)
    tp, fp = _ranked(scores, labels)
    return np.r_[0.0, tp / positives], np.r_[1.0, tp / (tp + fp)]


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= MAX_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, MAX_POINTS).round().astype(int))
    return x[keep], y[keep]


class _Frame:
    """Maps data coordinates into the plot area of one SVG figure."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (value - self.x0) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.bottom - (value - self.y0) / span * (self.bottom - self.top)


def _svg(title: str, body: Sequence[str], frame: _Frame, x_label: str, y_label: str, ticks: dict[str, list]) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="{frame.left}" y="{frame.top}" width="{frame.right - frame.left}" '
        f'height="{frame.bottom - frame.top}" fill="#fff" stroke="#999"/>',
        f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<text x="{(frame.left + frame.right) / 2}" y="{HEIGHT - 4}" text-anchor="middle" font-size="11">'
        f"{escape(x_label)}</text>",
        f'<text x="11" y="{(frame.top + frame.bottom) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 11 {(frame.top + frame.bottom) / 2})">{escape(y_label)}</text>',
    ]
    for value in ticks.get("x", []):
        parts.append(
            f'<text x="{frame.x(value):.1f}" y="{frame.bottom + 12}" text-anchor="middle" font-size="10">{value:.3g}</text>'
        )
    for value in ticks.get("y", []):
        parts.append(
            f'<text x="{frame.left - 3}" y="{frame.y(value) + 3:.1f}" text-anchor="end" font-size="10">{value:.3g}</text>'
        )
    parts.extend(body)
    parts.append("</svg>")
    return "".join(parts)


def _polyline(frame: _Frame, x: np.ndarray, y: np.ndarray, colour: str, step: bool = False) -> str:
    x, y = _thin(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    if step:  # precision is constant between recall levels: draw it as steps
        x, y = np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]
    points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(x, y, strict=True))
    return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"/>'


def _empty(title: str, reason: str) -> str:
    frame = _Frame((0, 1), (0, 1))
    note = (
        f'<text x="{(frame.left + frame.right) / 2}" y="{(frame.top + frame.bottom) / 2}" text-anchor="middle" '
        f'font-size="11" fill="#666">{escape(reason)}</text>'
    )
    return _svg(title, [note], frame, "", "", {})


def roc_svg(scores: np.ndarray, labels: np.ndarray, auroc: float | None = None) -> str:
    """Image-level ROC curve with the chance diagonal; ``auroc`` goes into the title."""
    fpr, tpr = roc_curve(scores, labels)
    title = "ROC" if auroc is None or np.isnan(auroc) else f"ROC (AUROC {100 * auroc:.1f})"
    if not fpr.size:
        return _empty(title, "needs good and defective images")
    frame = _Frame((0, 1), (0, 1))
    diagonal = (
        f'<line x1="{frame.x(0)}" y1="{frame.y(0)}" x2="{frame.x(1)}" y2="{frame.y(1)}" stroke="#bbb" '
        'stroke-dasharray="3 3"/>'
    )
    ticks = {"x": [0, 0.5, 1], "y": [0, 0.5, 1]}
    body = [diagonal, _polyline(frame, fpr, tpr, CURVE_COLOUR)]
    return _svg(title, body, frame, "false-positive rate", "true-positive rate", ticks)


def pr_svg(scores: np.ndarray, labels: np.ndarray, average_precision: float | None = None) -> str:
    """Image-level precision-recall curve with the defect rate as the chance level; AP in the title."""
    recall, precision = pr_curve(scores, labels)
    title = "Precision-recall" if average_precision is None or np.isnan(average_precision) else (
        f"Precision-recall (AP {100 * average_precision:.1f})"
    )
    if not recall.size:
        return _empty(title, "needs defective images")
    frame = _Frame((0, 1), (0, 1))
    chance = float(labels.mean())
    baseline = (
        f'<line x1="{frame.x(0)}" y1="{frame.y(chance):.1f}" x2="{frame.x(1)}" y2="{frame.y(chance):.1f}" '
        'stroke="#bbb" stroke-dasharray="3 3"/>'
    )
    ticks = {"x": [0, 0.5, 1], "y": [0, 0.5, 1]}
    body = [baseline, _polyline(frame, recall, precision, CURVE_COLOUR, step=True)]
    return _svg(title, body, frame, "recall", "precision", ticks)


def histogram_svg(
    scores: np.ndarray,
    labels: np.ndarray | None,
    markers: Sequence[Marker] = (),
    bins: int = 40,
    title: str = "Image scores",
) -> str:
    """Histogram of image scores, good and defective stacked in two colours, with vertical ``markers``.

    Args:
        scores: (N,) image scores.
        labels: (N,) ground truth (1 = defective), or ``None`` for unlabeled images (one colour).
        markers: thresholds to draw.
        bins: number of equal-width bins between the lowest and highest of scores and markers.
        title: figure title.
    """
    if not scores.size:
        return _empty(title, "no images")
    low = min(float(scores.min()), *(marker.value for marker in markers))
    high = max(float(scores.max()), *(marker.value for marker in markers))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    groups = [(scores, GOOD_COLOUR)] if labels is None else [
        (scores[labels == 0], GOOD_COLOUR),
        (scores[labels == 1], DEFECT_COLOUR),
    ]
    counts = [np.histogram(values, bins=edges)[0] for values, _ in groups]
    top = max(1, int(np.sum(counts, axis=0).max()))
    frame = _Frame((low, high), (0, top * 1.08))
    body: list[str] = []
    below = np.zeros(bins)
    for (_, colour), count in zip(groups, counts, strict=True):
        for index in np.flatnonzero(count):
            x0, x1 = frame.x(edges[index]), frame.x(edges[index + 1])
            y_top, y_base = frame.y(below[index] + count[index]), frame.y(below[index])
            body.append(
                f'<rect x="{x0:.1f}" y="{y_top:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                f'height="{y_base - y_top:.1f}" fill="{colour}" fill-opacity="0.85"/>'
            )
        below += count
    legend_y = MARGIN_TOP + 12
    if labels is not None:
        for offset, (text, colour) in enumerate((("good", GOOD_COLOUR), ("defective", DEFECT_COLOUR))):
            x = MARGIN_LEFT + 6 + 62 * offset
            body.append(f'<rect x="{x}" y="{legend_y - 8}" width="9" height="9" fill="{colour}"/>')
            body.append(f'<text x="{x + 12}" y="{legend_y}" font-size="10">{text}</text>')
        legend_y += 12
    for marker in markers:
        x = frame.x(marker.value)
        dash = ' stroke-dasharray="4 3"' if marker.dashed else ""
        body.append(
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}" stroke="{marker.colour}" '
            f'stroke-width="1.5"{dash}/>'
        )
        anchor = "end" if x > (frame.left + frame.right) / 2 else "start"
        shift = -3 if anchor == "end" else 3
        body.append(
            f'<text x="{x + shift:.1f}" y="{legend_y}" text-anchor="{anchor}" font-size="10" fill="{marker.colour}">'
            f"{escape(marker.text)}</text>"
        )
        legend_y += 12
    ticks = {"x": [low, high], "y": [0, top]}
    return _svg(title, body, frame, "image score", "images", ticks)
