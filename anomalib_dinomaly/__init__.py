"""Dinomaly (Guo et al., CVPR 2025) and Dinomaly2 (Guo et al., 2025) as an anomalib plugin.

Public names are imported lazily so that ``import anomalib_dinomaly`` (and the interpreter-start hook)
stays cheap; torch and anomalib load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Dinomaly": "anomalib_dinomaly.lightning_model",
    "Dinomaly2": "anomalib_dinomaly.dinomaly2",
    "DinomalyModel": "anomalib_dinomaly.torch_model",
    "Dinomaly2Model": "anomalib_dinomaly.torch_model",
    "DinoV2Encoder": "anomalib_dinomaly.encoder",
    "DinoV3Encoder": "anomalib_dinomaly.encoder_dinov3",
    "build_encoder": "anomalib_dinomaly.encoder",
    "PretrainedWeightsError": "anomalib_dinomaly.encoder",
    "AnomalyMapGenerator": "anomalib_dinomaly.anomaly_map",
    "GlobalCosineHardMiningLoss": "anomalib_dinomaly.loss",
    "StableAdamW": "anomalib_dinomaly.optim",
    "WarmupCosineLR": "anomalib_dinomaly.optim",
    "from_official_checkpoint": "anomalib_dinomaly.official",
    "dinomaly_from_official_checkpoint": "anomalib_dinomaly.official",
    "MultiClass": "anomalib_dinomaly.data",
    "CategoryEvaluator": "anomalib_dinomaly.metrics",
    "CategoryThresholds": "anomalib_dinomaly.metrics",
    "DinomalyPostProcessor": "anomalib_dinomaly.post_processor",
    "DataCheckError": "anomalib_dinomaly.data_check",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:  # noqa: ANN401
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    msg = f"module 'anomalib_dinomaly' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(__all__)
