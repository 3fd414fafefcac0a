"""anomalib's image item and batch with the product category of each sample.

A unified model is evaluated per category, so the category travels with every sample from the
dataset through the model, post-processor, evaluator and visualizer. These are anomalib's own
``ImageItem`` / ``ImageBatch`` (and their numpy twins) with one more field; everything anomalib does
with a batch (``update``, iteration, ``to_numpy``, collation) keeps the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from anomalib.data import ImageBatch, ImageItem
from anomalib.data.dataclasses.numpy import NumpyImageBatch, NumpyImageItem

__all__ = ["CategoryImageBatch", "CategoryImageItem", "NumpyCategoryImageBatch", "NumpyCategoryImageItem"]


@dataclass
class NumpyCategoryImageItem(NumpyImageItem):
    """``NumpyImageItem`` with ``category`` (str)."""

    category: str | None = None


@dataclass
class NumpyCategoryImageBatch(NumpyImageBatch):
    """``NumpyImageBatch`` with ``category`` (list of B str)."""

    item_class: ClassVar[type[NumpyImageItem]] = NumpyCategoryImageItem
    category: list[str] | None = None


@dataclass
class CategoryImageItem(ImageItem):
    """``ImageItem`` (image (C, H, W), gt_mask (H, W), ...) with the product ``category`` (str)."""

    numpy_class: ClassVar[type[NumpyImageItem]] = NumpyCategoryImageItem
    category: str | None = None

    @classmethod
    def from_item(cls, item: ImageItem, category: str) -> CategoryImageItem:
        """The same sample, tagged with ``category``."""
        return cls(**{field.name: getattr(item, field.name) for field in fields(item)}, category=category)


@dataclass
class CategoryImageBatch(ImageBatch):
    """``ImageBatch`` (image (B, C, H, W), gt_mask (B, H, W), ...) with ``category`` (list of B str)."""

    item_class: ClassVar[type[ImageItem]] = CategoryImageItem
    numpy_class: ClassVar[type[NumpyImageBatch]] = NumpyCategoryImageBatch
    category: list[str] | None = None
