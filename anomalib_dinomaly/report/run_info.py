"""What the report says about the run: model, encoder, geometry, training, data, versions, paper setting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from torch import nn

from anomalib_dinomaly.metrics.table import PAPER_RESULTS

__all__ = ["PaperComparison", "RunInfo", "encoder_is_random", "paper_comparison"]

PACKAGES = ("anomalib_dinomaly", "anomalib", "torch", "lightning", "timm", "torchmetrics", "openvino")
#: The encoder of the paper's main tables (Dinomaly ViT-B, with registers).
PAPER_ENCODER = "dinov2reg_vit_base_14"
PAPER_SOURCE = (
    "Guo et al., Dinomaly (CVPR 2025), unified multi-class setting, ViT-B/14 with registers, 448 -> 392: the "
    "dataset means of the paper and of the official repository's README (guojiajeremy/Dinomaly)"
)


@dataclass
class RunInfo:
    """Facts about a run, shown at the top of the report.

    Attributes:
        items: ``(label, value)`` pairs in display order.
        random_weights: the encoder was never given pretrained weights (a banner says the numbers mean nothing).
    """

    items: list[tuple[str, str]] = field(default_factory=list)
    random_weights: bool = False

    def add(self, label: str, value: Any) -> None:  # noqa: ANN401
        """Append one fact (skipped when ``value`` is ``None`` or empty)."""
        if value not in (None, ""):
            self.items.append((label, str(value)))


def package_versions() -> str:
    """``name version`` of the packages that decide the results (those already imported), comma-separated.

    Read from the modules' ``__version__``: ``importlib.metadata`` scans every installed distribution
    on its first call, which can take seconds in a large environment.
    """
    versions = []
    for name in PACKAGES:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) or getattr(module, "get_version", lambda: None)()
        if version:
            versions.append(f"{name} {version}")
    return ", ".join(versions)


def now() -> str:
    """The current UTC time, to the minute."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def encoder_is_random(encoder: nn.Module) -> bool:
    """True when every LayerNorm of ``encoder`` still has its initial weight 1 and bias 0.

    Pretrained ViTs never keep those values, and the encoder is frozen, so this holds exactly when no
    weights were loaded, including for models restored from a checkpoint (whose hyper-parameters no
    longer say where the weights came from).
    """
    norms = [module for module in encoder.modules() if isinstance(module, nn.LayerNorm) and module.elementwise_affine]
    return bool(norms) and all(
        bool((norm.weight == 1).all()) and (norm.bias is None or bool((norm.bias == 0).all())) for norm in norms
    )


@dataclass(frozen=True)
class PaperComparison:
    """The paper's figures for the run's data set, and whether the run's setting is the paper's.

    Attributes:
        dataset: key of :data:`~anomalib_dinomaly.metrics.table.PAPER_RESULTS`.
        values: ``{metric: value}`` in [0, 1] (dataset means).
        mismatches: why the setting differs from the paper's (empty: comparable, differences coloured).
    """

    dataset: str
    values: dict[str, float]
    mismatches: tuple[str, ...]

    @property
    def comparable(self) -> bool:
        """The run is in the paper's setting: differences are meaningful."""
        return not self.mismatches


def paper_comparison(
    dataset: str | None,
    categories: list[str],
    all_categories: tuple[str, ...] | None,
    unified: bool,
    encoder_name: str | None,
) -> PaperComparison | None:
    """The paper's row for ``dataset`` (``None`` if the paper does not report it), with the setting's mismatches.

    Args:
        dataset: the datamodule's name (``MVTecAD``, ``Visa``, ``RealIAD``, ...).
        categories: the categories tested.
        all_categories: the benchmark's full category list (anomalib's), if known.
        unified: one model was trained for all categories.
        encoder_name: the model's encoder name.
    """
    if dataset not in PAPER_RESULTS:
        return None
    mismatches = []
    if all_categories is not None and set(categories) != set(all_categories):
        mismatches.append(f"{len(categories)} of the {len(all_categories)} categories tested (the paper: all)")
    if not unified:
        mismatches.append("one model per category (the paper's figures here are for one unified model)")
    if encoder_name != PAPER_ENCODER:
        mismatches.append(f"encoder {encoder_name} (the paper: {PAPER_ENCODER})")
    return PaperComparison(dataset, dict(PAPER_RESULTS[dataset]), tuple(mismatches))
