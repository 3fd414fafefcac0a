"""Few-shot training: k normal training images per category and the Dinomaly2 preview's augmentation.

Dinomaly2 reports results with only k = 8 normal images per category. Its few-shot script keeps k training
images per category and augments them: resize to ``image_size``, ``RandomResizedCrop`` to ``crop_size`` at the
fixed area fraction ``(crop_size / image_size)^2`` with aspect ratio 0.95 to 1.05, a random quarter turn,
horizontal and vertical flips, then the ImageNet normalisation. Validation and test images keep the usual
resize, center crop and normalisation.

In anomalib the model's :class:`~anomalib.pre_processing.PreProcessor` (resize, center crop, normalise) runs on
every batch, training included. So the augmentation here ends by padding the crop back to ``image_size`` with
the crop in exactly the place the pre-processor's center crop takes it from: the pre-processor's resize is then
a no-op (same size), its center crop returns the augmented crop unchanged, and it normalises. Each training
image goes through the preview's geometry once; the model, its export and the evaluation images are untouched.
The sizes are read from the model's pre-processor, so any ``image_size`` / ``crop_size`` works (e.g. 512 / 448).

Use :class:`FewShot` around one anomalib datamodule, or ``MultiClass(..., shots=k)`` for many categories.
"""

from __future__ import annotations

import copy
import logging
import random

import pandas as pd
from anomalib.data import AnomalibDataModule
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils import LabelName
from anomalib.utils.attrs import get_nested_attr
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import (
    CenterCrop,
    Compose,
    Pad,
    RandomChoice,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
    Transform,
)

__all__ = ["DEFAULT_SHOT_SEED", "SHOT_ASPECT_RATIO", "FewShot", "few_shot_augmentation", "select_shots"]

logger = logging.getLogger(__name__)

#: Seed of the few-shot draw when none is given (the preview script's seed).
DEFAULT_SHOT_SEED = 1
#: Aspect-ratio range of the preview's ``RandomResizedCrop``.
SHOT_ASPECT_RATIO = (0.95, 1.05)


def check_shots(shots: int | None) -> None:
    """Raise ``ValueError`` unless ``shots`` is ``None`` (all images) or a positive integer."""
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        msg = f"shots must be a positive integer (normal training images per category), got {shots!r}."
        raise ValueError(msg)


def select_shots(samples: pd.DataFrame, shots: int, seed: int, category: str) -> pd.DataFrame:
    """The rows of ``shots`` normal images of one category's training table, drawn reproducibly.

    The draw depends only on ``seed``, ``category`` and the set of normal image paths (sorted before drawing),
    so the same images come back whatever the file-system order, the worker count, or the other categories of
    the run: a unified run and per-category runs with the same seed train on the same images.

    Args:
        samples: an anomalib samples table (``image_path``, ``label_index``, ...) of the training split.
        shots: how many normal images to keep (>= 1).
        seed: seed of the draw; different seeds draw different images (when there is a choice).
        category: the category name (part of the draw's seed, and named in errors).

    Returns:
        The kept rows, in their original order.

    Raises:
        ValueError: ``shots`` < 1, or more shots than the category has normal training images.
    """
    check_shots(shots)
    normal = samples["label_index"] == LabelName.NORMAL
    paths = sorted(samples.loc[normal, "image_path"].astype(str))
    if shots > len(paths):
        msg = (
            f"Category {category!r} has {len(paths)} normal training images, fewer than shots={shots}; "
            f"use shots <= {len(paths)} or leave shots unset to train on all of them."
        )
        raise ValueError(msg)
    # A string seed is hashed with SHA-512 by `random`: stable across processes and Python hash seeds.
    chosen = set(random.Random(f"{seed}/{category}").sample(paths, shots))
    return samples[samples["image_path"].astype(str).isin(chosen)].reset_index(drop=True)


def few_shot_augmentation(model_transform: Transform) -> Compose:
    """The preview's few-shot training augmentation, sized and placed for the model's pre-processor.

    ``model_transform`` must resize to a fixed ``(H, W)`` and may center-crop ``(h, w)`` (Dinomaly: 448 -> 392).
    Returned pipeline, per training image (C, H0, W0) -> (C, H, W)::

        Resize(H, W) -> RandomResizedCrop((h, w), scale=(hw / HW, hw / HW), ratio=(0.95, 1.05))
        -> quarter turn of 0, 90, 180 or 270 degrees -> horizontal flip (p 0.5) -> vertical flip (p 0.5)
        -> zero padding to (H, W) with the crop where the model's CenterCrop takes it from

    The model's pre-processor then leaves the size (Resize is a no-op at (H, W)), crops the augmented
    (h, w) image back out exactly and normalises it. Without a center crop, ``h, w = H, W`` and the crop
    step keeps the whole image.

    Raises:
        ValueError: the transform has no Resize to a fixed (height, width), or the crop is not square
            (a quarter turn would change its shape).
    """
    resizes = extract_transforms_by_type(model_transform, Resize)
    if not resizes or resizes[0].size is None or len(resizes[0].size) != 2:
        msg = (
            "Few-shot augmentation needs the model's pre-processor to Resize to a fixed (height, width), "
            f"got {model_transform}. Use the model's default pre-processor or set shot_augmentation=False."
        )
        raise ValueError(msg)
    resize = resizes[0]
    height, width = resize.size
    crops = extract_transforms_by_type(model_transform, CenterCrop)
    crop_height, crop_width = crops[0].size if crops else (height, width)
    if crop_height != crop_width:
        msg = f"Few-shot augmentation turns by 90 degrees: it needs a square crop, got {crop_height}x{crop_width}."
        raise ValueError(msg)
    if crop_height > height or crop_width > width:
        msg = f"The model's center crop {(crop_height, crop_width)} is larger than its resize {(height, width)}."
        raise ValueError(msg)
    area_fraction = crop_height * crop_width / (height * width)
    # Same anchor as torchvision's center crop, so that the pre-processor's CenterCrop undoes this padding.
    top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
    padding = [left, top, width - crop_width - left, height - crop_height - top]
    return Compose([
        copy.deepcopy(resize),
        RandomResizedCrop((crop_height, crop_width), scale=(area_fraction, area_fraction), ratio=SHOT_ASPECT_RATIO),
        # torchvision rotates by exact multiples of 90 degrees without resampling (equal to torch.rot90).
        RandomChoice([RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
        RandomHorizontalFlip(),
        RandomVerticalFlip(),
        Pad(padding, fill=0),
    ])


class FewShotAugmentationMixin:
    """Puts :func:`few_shot_augmentation` on ``train_data`` once a trainer's model is attached.

    For datamodules with ``shots`` and ``shot_augmentation`` attributes; validation and test subsets get
    anomalib's usual treatment.
    """

    shots: int | None
    shot_augmentation: bool
    _shot_augmentation_missing: bool = False

    def _check_shot_arguments(self) -> None:
        check_shots(self.shots)
        if self.shots is not None and self.shot_augmentation and self.train_augmentations is not None:
            msg = (
                "train_augmentations (or augmentations) cannot be combined with the few-shot augmentation; "
                "set shot_augmentation=False to use your own training augmentations with shots."
            )
            raise ValueError(msg)

    def _update_augmentations(self) -> None:
        super()._update_augmentations()
        if self.shots is None or not self.shot_augmentation or not hasattr(self, "train_data"):
            return
        # The unwrapped module: under DDP, ``trainer.model`` can be the wrapper.
        model_transform = get_nested_attr(self, "trainer.lightning_module.pre_processor.transform", None)
        self._shot_augmentation_missing = model_transform is None
        if model_transform is not None:
            self._update_subset_augmentations(self.train_data, few_shot_augmentation(model_transform), model_transform)

    def train_dataloader(self) -> DataLoader:
        """anomalib's training loader; says so when the few-shot augmentation could not be sized."""
        if self._shot_augmentation_missing:
            logger.warning(
                "The few-shot augmentation takes its sizes from the model's pre-processor, and no model is attached "
                "(train through Engine.fit): these training images are not augmented.",
            )
        return super().train_dataloader()


class FewShot(FewShotAugmentationMixin, AnomalibDataModule):
    """Few-shot training on any anomalib image datamodule: ``shots`` normal training images, augmented.

    The wrapped datamodule reads and splits its data as it would alone; then only ``shots`` of its normal
    training images are kept (:func:`select_shots`) and, during training with a model, augmented with
    :func:`few_shot_augmentation`. Validation and test sets are the wrapped datamodule's, unchanged. Name,
    category, batch sizes and workers are the wrapped datamodule's (results land in the same folder).

    Example::

        data = FewShot(MVTecAD(root="./datasets/MVTecAD", category="bottle"), shots=8)
        Engine(max_steps=5000).fit(Dinomaly(), datamodule=data)

    Args:
        datamodule: an anomalib image datamodule (MVTecAD, Visa, Folder, ProductFolder, ...).
        shots: normal training images to keep (the paper's few-shot table: 8).
        shot_seed: seed of the draw (default 1, the preview script's).
        shot_augmentation: apply the preview's few-shot augmentation to the training images (default True).

    Raises:
        ValueError: ``shots`` < 1, or the wrapped datamodule has training augmentations while
            ``shot_augmentation`` is on. At setup: fewer normal training images than ``shots``.
    """

    def __init__(
        self,
        datamodule: AnomalibDataModule,
        shots: int,
        shot_seed: int = DEFAULT_SHOT_SEED,
        shot_augmentation: bool = True,
    ) -> None:
        super().__init__(
            train_batch_size=datamodule.train_batch_size,
            eval_batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            train_augmentations=datamodule.train_augmentations,
            val_augmentations=datamodule.val_augmentations,
            test_augmentations=datamodule.test_augmentations,
            seed=datamodule.seed,
        )
        self.datamodule = datamodule
        self.shots = shots
        self.shot_seed = shot_seed
        self.shot_augmentation = shot_augmentation
        self._check_shot_arguments()

    @property
    def name(self) -> str:
        """The wrapped datamodule's name (e.g. ``MVTecAD``)."""
        return self.datamodule.name

    @property
    def category(self) -> str:
        """The wrapped datamodule's category."""
        return self.datamodule.category

    @category.setter
    def category(self, category: str) -> None:
        self.datamodule.category = category

    def prepare_data(self) -> None:
        """Let the wrapped datamodule check (and, where anomalib does so, download) its data."""
        self.datamodule.prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        self.datamodule.setup()
        train_data = copy.copy(self.datamodule.train_data)
        category = self.category or self.name
        available = len(train_data.samples)
        train_data.samples = select_shots(train_data.samples, self.shots, self.shot_seed, category)
        logger.info(
            "Few-shot training: %s keeps %d of %d training images (seed %d).",
            category,
            self.shots,
            available,
            self.shot_seed,
        )
        self.train_data = train_data
        self.test_data = self.datamodule.test_data
        if hasattr(self.datamodule, "val_data"):
            self.val_data = self.datamodule.val_data

    def _create_test_split(self) -> None:
        """Nothing to do: the wrapped datamodule made its test split."""

    def _create_val_split(self) -> None:
        """Nothing to do: the wrapped datamodule made its validation split."""
