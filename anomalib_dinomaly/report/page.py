"""The report page: one self-contained HTML file (inline CSS and SVG, no scripts, images as relative files)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from anomalib_dinomaly.metrics.names import PAPER_METRICS
from anomalib_dinomaly.metrics.table import MEAN, TITLES
from anomalib_dinomaly.report.overlay import JET_CSS, ColourScale
from anomalib_dinomaly.report.run_info import PAPER_SOURCE, PaperComparison, RunInfo

__all__ = ["Gallery", "Section", "Tile", "anchor", "metrics_table_html", "render_page"]

#: Differences to the paper (percentage points) from which a value counts as clearly below it.
BELOW_PAPER = -1.0

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#f5f5f7}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.5em;margin:.4em 0} h2{font-size:1.2em;margin:1.2em 0 .4em} h3{font-size:1em;margin:.8em 0 .3em}
.banner{background:#b3261e;color:#fff;padding:12px 16px;border-radius:6px;font-weight:600;margin:12px 0}
.note{color:#555;font-size:.9em;max-width:80em}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:.9em;background:#fff;padding:10px 14px;border-radius:6px}
dl.info dt{font-weight:600} dl.info dd{margin:0;overflow-wrap:anywhere}
table.metrics{border-collapse:collapse;background:#fff;font-size:.9em}
table.metrics th,table.metrics td{padding:4px 9px;border-bottom:1px solid #e3e3e6;text-align:right}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
table.metrics tr.mean td{font-weight:700;border-top:2px solid #999}
tr.paper td{color:#555;font-style:italic}
td.better{background:#d8f0d8} td.close{background:#fbeec1} td.worse{background:#f6c9c4} td.plain{color:#777}
section.category{background:#fff;border-radius:8px;padding:8px 16px 16px;margin:18px 0}
.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.counts{font-size:.9em;margin:.3em 0}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.tile{margin:0;width:256px;font-size:.8em}
figure.tile img{display:block;max-width:256px;max-height:256px;border:3px solid #ccc;border-radius:3px}
figure.tile.alarm img{border-color:#d4462f} figure.tile.pass img{border-color:#3b78c4}
figure.tile figcaption{margin-top:2px;overflow-wrap:anywhere}
.scale{display:flex;align-items:center;gap:8px;font-size:.85em;margin:6px 0}
.scale .bar{position:relative;width:240px;height:12px;border:1px solid #888}
.scale .tick{position:absolute;top:-4px;width:2px;height:20px;background:#000}
nav a{margin-right:10px}
"""


@dataclass
class Tile:
    """One image of a gallery.

    Attributes:
        src: image path relative to the page.
        caption: lines under the image (score, label, decision, file).
        alarm: the model flagged it (red frame) rather than passing it (blue frame).
    """

    src: str
    caption: list[str]
    alarm: bool


@dataclass
class Gallery:
    """A titled row of tiles; ``empty`` says why there are none."""

    title: str
    description: str
    tiles: list[Tile] = field(default_factory=list)
    empty: str = "none"


@dataclass
class Section:
    """One category (or one folder of images): counts, figures (SVG) and galleries."""

    name: str
    counts: str
    figures: list[str]
    galleries: list[Gallery]


def anchor(name: str) -> str:
    """An HTML id for a category name."""
    return "category-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _mean(values: Sequence[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def metrics_table_html(rows: Mapping[str, Mapping[str, float]], comparison: PaperComparison | None) -> str:
    """The per-category table in percent, the unweighted mean, and the paper's values with the difference.

    Columns are the paper's seven metrics in the paper's order, then any further metric the evaluator
    reports (in its order); a category without a value shows a dash.
    """
    if not rows:
        return '<p class="note">No per-category metrics: the model\'s evaluator is not a CategoryEvaluator.</p>'
    present = list(dict.fromkeys(metric for row in rows.values() for metric in row))
    metrics = [metric for metric in PAPER_METRICS if metric in present] + [m for m in present if m not in PAPER_METRICS]
    mean = {metric: _mean([row.get(metric, math.nan) for row in rows.values()]) for metric in metrics}
    header = "".join(f"<th>{escape(TITLES.get(metric, metric))}</th>" for metric in metrics)
    lines = [f'<table class="metrics"><thead><tr><th>category</th>{header}</tr></thead><tbody>']
    for name, row in rows.items():
        cells = "".join(f"<td>{_percent(row.get(metric, math.nan))}</td>" for metric in metrics)
        lines.append(f'<tr><td><a href="#{anchor(name)}">{escape(name)}</a></td>{cells}</tr>')
    mean_cells = "".join(f"<td>{_percent(mean[metric])}</td>" for metric in metrics)
    lines.append(f'<tr class="mean"><td>{MEAN} ({len(rows)})</td>{mean_cells}</tr>')
    notes = []
    if comparison is not None:
        paper_cells, difference_cells = [], []
        for metric in metrics:
            paper = comparison.values.get(metric)
            paper_cells.append(f"<td>{_percent(math.nan if paper is None else paper)}</td>")
            if paper is None or math.isnan(mean[metric]):
                difference_cells.append("<td></td>")
                continue
            difference = 100 * (mean[metric] - paper)
            if not comparison.comparable:
                kind = "plain"
            else:
                kind = "better" if difference >= 0 else "close" if difference > BELOW_PAPER else "worse"
            difference_cells.append(f'<td class="{kind}">{difference:+.1f}</td>')
        lines.append(f'<tr class="paper"><td>paper, {escape(comparison.dataset)} mean</td>{"".join(paper_cells)}</tr>')
        lines.append(f'<tr class="paper"><td>ours − paper (points)</td>{"".join(difference_cells)}</tr>')
        notes.append(f"Paper values: {escape(PAPER_SOURCE)}. Per-category paper values are not included.")
        if comparison.comparable:
            notes.append(
                "Difference: green at or above the paper, yellow less than 1 point below, red 1 point or more below."
            )
        else:
            notes.append(
                "Not the paper's setting, so the difference is shown uncoloured: "
                + escape("; ".join(comparison.mismatches))
                + "."
            )
    lines.append("</tbody></table>")
    lines.extend(f'<p class="note">{note}</p>' for note in notes)
    return "\n".join(lines)


def _colour_bar(scale: ColourScale) -> str:
    position = 100 * scale.fraction(scale.threshold)
    return (
        '<div class="scale"><span>map colours, fixed for every image:</span>'
        f"<span>{scale.low:.3g}</span>"
        f'<span class="bar" style="background:{JET_CSS}"><span class="tick" style="left:{position:.1f}%"></span></span>'
        f"<span>{scale.high:.3g}</span><span>(black tick: pixel threshold {scale.threshold:.3g}; white outline: "
        "ground-truth defect, where a mask exists; uncoloured border: outside the model's center crop)</span></div>"
    )


def _section_html(section: Section) -> str:
    parts = [
        f'<section class="category" id="{anchor(section.name)}"><h2>{escape(section.name)}</h2>',
        f'<p class="counts">{escape(section.counts)}</p>',
        f'<div class="figures">{"".join(section.figures)}</div>',
    ]
    for gallery in section.galleries:
        parts.append(f"<h3>{escape(gallery.title)}</h3><p class=\"note\">{escape(gallery.description)}</p>")
        if not gallery.tiles:
            parts.append(f'<p class="note">({escape(gallery.empty)})</p>')
            continue
        parts.append('<div class="gallery">')
        for tile in gallery.tiles:
            caption = "<br>".join(escape(line) for line in tile.caption)
            kind = "alarm" if tile.alarm else "pass"
            parts.append(
                f'<figure class="tile {kind}"><img src="{escape(tile.src)}" alt="{escape(tile.caption[0])}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def render_page(
    title: str,
    info: RunInfo,
    sections: Sequence[Section],
    table_html: str = "",
    scale: ColourScale | None = None,
    reading_guide: str = "",
) -> str:
    """The whole HTML document.

    Args:
        title: page title.
        info: the run's facts; ``info.random_weights`` adds the banner.
        sections: one per category (or one for a folder).
        table_html: the metrics table (:func:`metrics_table_html`), if any.
        scale: the anomaly-map colour scale shown above the sections.
        reading_guide: HTML paragraph on how to read the plots.
    """
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
    ]
    if info.random_weights:
        parts.append(
            '<div class="banner" id="random-weights">RANDOM ENCODER WEIGHTS: this model was never given pretrained '
            "DINOv2 weights. The pipeline ran end to end, but the metrics, curves and heat maps below are "
            "meaningless. Pass encoder_weights=/path/to/file (CLI: --model.encoder_weights) for real results.</div>"
        )
    parts.append('<dl class="info">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in info.items) + "</dl>")
    if table_html:
        parts.append(f"<h2>Metrics per category</h2>{table_html}")
    if len(sections) > 1:
        parts.append("<nav>" + "".join(f'<a href="#{anchor(s.name)}">{escape(s.name)}</a>' for s in sections) + "</nav>")
    if reading_guide:
        parts.append(f'<p class="note">{reading_guide}</p>')
    if scale is not None:
        parts.append(_colour_bar(scale))
    parts.extend(_section_html(section) for section in sections)
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
