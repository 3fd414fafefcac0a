"""Multi-class ("unified") data over anomalib's datasets, with the category kept on every sample."""

from anomalib_dinomaly.data.dataclasses import (
    CategoryImageBatch,
    CategoryImageItem,
    NumpyCategoryImageBatch,
    NumpyCategoryImageItem,
)
from anomalib_dinomaly.data.folder import ProductFolder, find_products
from anomalib_dinomaly.data.multi_class import UNIFIED, MultiClass, MultiClassDataset

__all__ = [
    "UNIFIED",
    "CategoryImageBatch",
    "CategoryImageItem",
    "MultiClass",
    "MultiClassDataset",
    "NumpyCategoryImageBatch",
    "NumpyCategoryImageItem",
    "ProductFolder",
    "find_products",
]
