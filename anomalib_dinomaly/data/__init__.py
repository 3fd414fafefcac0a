"""Multi-class ("unified") data over anomalib's datasets, with the category kept on every sample; few-shot training."""

from anomalib_dinomaly.data.dataclasses import (
    CategoryImageBatch,
    CategoryImageItem,
    NumpyCategoryImageBatch,
    NumpyCategoryImageItem,
)
from anomalib_dinomaly.data.few_shot import FewShot, few_shot_augmentation, select_shots
from anomalib_dinomaly.data.folder import ProductFolder, find_products
from anomalib_dinomaly.data.multi_class import UNIFIED, MultiClass, MultiClassDataset

__all__ = [
    "UNIFIED",
    "CategoryImageBatch",
    "CategoryImageItem",
    "FewShot",
    "MultiClass",
    "MultiClassDataset",
    "NumpyCategoryImageBatch",
    "NumpyCategoryImageItem",
    "ProductFolder",
    "few_shot_augmentation",
    "find_products",
    "select_shots",
]
