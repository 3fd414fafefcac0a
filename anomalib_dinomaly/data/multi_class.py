"""Multi-class ("unified") data: one training set made of many product categories, tested per category.

``MultiClass`` builds one anomalib datamodule per category (``MVTecAD``, ``Visa``, ``RealIAD``,
:class:`~anomalib_dinomaly.data.ProductFolder`, any other anomalib datamodule that takes ``root`` and
``category``, or datamodules you built yourself), lets each one read and split its own data exactly as
it would alone, and concatenates the results: one shuffled training loader over all normal training
images, and validation / test sets whose samples carry their ``category``
(:class:`~anomalib_dinomaly.data.CategoryImageBatch`).

Example (CLI)::

    anomalib train --model Dinomaly --data anomalib_dinomaly.data.MultiClass \
        --data.dataset MVTecAD --data.root ./datasets/MVTecAD --data.categories all

Few-shot training (``--data.shots 8``) keeps 8 normal training images per category and augments them as the
Dinomaly2 preview does (:mod:`anomalib_dinomaly.data.few_shot`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.data import AnomalibDataModule, AnomalibDataset
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from anomalib_dinomaly.data.dataclasses import CategoryImageBatch, CategoryImageItem
from anomalib_dinomaly.data.few_shot import DEFAULT_SHOT_SEED, FewShot, FewShotAugmentationMixin
from anomalib_dinomaly.data.folder import ProductFolder, find_products

__all__ = ["MultiClass", "MultiClassDataset", "UNIFIED"]

logger = logging.getLogger(__name__)

#: ``category`` of a multi-class datamodule / dataset (the results folder name of a unified run).
UNIFIED = "unified"

_FOLDER_NAMES = {"Folder", "ProductFolder"}
_CATEGORY_LISTS = {
    "MVTecAD": "anomalib.data.datasets.image.mvtecad",
    "Visa": "anomalib.data.datasets.image.visa",
    "RealIAD": "anomalib.data.datasets.image.realiad",
    "MPDD": "anomalib.data.datasets.image.mpdd",
    "BTech": "anomalib.data.datasets.image.btech",
}


class MultiClassDataset(AnomalibDataset):
    """Concatenation of per-category anomalib datasets whose items carry their category.

    The samples table gets a ``category`` column and is ordered by category (in the given order), then
    by image path, so a test loader visits the categories one after another.

    Args:
        datasets: ``{category: dataset}`` (or ``(category, dataset)`` pairs) of anomalib image datasets
            that load items the standard anomalib way (MVTecAD, Visa, RealIAD, Folder, ...).
        augmentations: applied to every item, as in any anomalib dataset.

    Raises:
        ValueError: no dataset, a repeated category, datasets of different tasks, or a dataset type that
            loads its items differently (e.g. MVTec LOCO, depth or video datasets).
    """

    def __init__(
        self,
        datasets: Mapping[str, AnomalibDataset] | Sequence[tuple[str, AnomalibDataset]],
        augmentations: Transform | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        pairs = list(datasets.items()) if isinstance(datasets, Mapping) else list(datasets)
        if not pairs:
            msg = "MultiClassDataset needs at least one (category, dataset) pair."
            raise ValueError(msg)
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            msg = f"Categories must be unique, got {names}."
            raise ValueError(msg)
        for name, dataset in pairs:
            # Items are read from the concatenated table with anomalib's standard loader.
            if type(dataset).__getitem__ is not AnomalibDataset.__getitem__:
                msg = (
                    f"Category {name!r}: {type(dataset).__name__} loads items its own way and cannot be mixed; "
                    "MultiClass supports image datasets such as MVTecAD, Visa, RealIAD and Folder."
                )
                raise ValueError(msg)
        tasks = {name: dataset.task for name, dataset in pairs}
        if len(set(tasks.values())) > 1:
            msg = f"All categories must have the same task (all with masks or all without), got {tasks}."
            raise ValueError(msg)
        self.categories: list[str] = names
        samples = pd.concat([dataset.samples.assign(category=name) for name, dataset in pairs], ignore_index=True)
        samples.attrs["task"] = next(iter(tasks.values())).value
        self.samples = samples
        self.category = UNIFIED

    @property
    def samples(self) -> pd.DataFrame:
        """The samples table (``image_path``, ``mask_path``, ``label_index``, ``split``, ``category``, ...)."""
        return AnomalibDataset.samples.fget(self)

    @samples.setter
    def samples(self, samples: pd.DataFrame) -> None:
        if "category" not in samples.columns:
            msg = "MultiClassDataset samples need a 'category' column."
            raise ValueError(msg)
        AnomalibDataset.samples.fset(self, samples)
        rank = {name: index for index, name in enumerate(self.categories)}
        self._samples = self._samples.sort_values(
            by="category",
            key=lambda column: column.map(rank),
            kind="stable",
            ignore_index=True,
        )

    def category_counts(self) -> dict[str, int]:
        """Number of samples per category, in category order (categories without samples omitted)."""
        counts = self.samples["category"].value_counts()
        return {name: int(counts[name]) for name in self.categories if name in counts}

    def __getitem__(self, index: int) -> CategoryImageItem:
        """The anomalib item of sample ``index`` with its ``category``."""
        item = super().__getitem__(index)
        return CategoryImageItem.from_item(item, str(self.samples.iloc[index]["category"]))

    @property
    def collate_fn(self) -> Callable:
        """Collates items into a :class:`CategoryImageBatch`."""
        return CategoryImageBatch.collate


def resolve_datamodule_class(dataset: str) -> type[AnomalibDataModule]:
    """An anomalib datamodule class from a name (``MVTecAD``, ``Visa``, ``RealIAD``, ``Folder``) or class path.

    ``Folder`` means :class:`ProductFolder` (one product per sub-folder of ``root``, MVTec-AD layout).

    Raises:
        ValueError: the name is neither an anomalib datamodule nor an importable datamodule class.
    """
    if dataset in _FOLDER_NAMES:
        return ProductFolder
    if "." in dataset:
        module_name, _, class_name = dataset.rpartition(".")
        candidate = getattr(importlib.import_module(module_name), class_name, None)
    else:
        candidate = getattr(importlib.import_module("anomalib.data"), dataset, None)
    if not (inspect.isclass(candidate) and issubclass(candidate, AnomalibDataModule)):
        msg = (
            f"Unknown dataset {dataset!r}: use MVTecAD, Visa, RealIAD, Folder (one product per sub-folder), "
            "another anomalib datamodule name, or a datamodule class path."
        )
        raise ValueError(msg)
    return candidate


def known_categories(dataset: str) -> tuple[str, ...] | None:
    """anomalib's category list for ``dataset`` (MVTecAD, Visa, RealIAD, MPDD, BTech), else ``None``."""
    module = _CATEGORY_LISTS.get(dataset)
    return tuple(importlib.import_module(module).CATEGORIES) if module else None


class MultiClass(FewShotAugmentationMixin, AnomalibDataModule):
    """Unified multi-class datamodule over anomalib's own datasets.

    Give either a benchmark (``dataset`` + ``root`` + ``categories``), or your own per-category
    datamodules (``datamodules``), or both. Every category's datamodule reads and splits its data as it
    would alone (its validation split follows ``val_split_mode``); the training images of all categories
    form one shuffled loader; validation and test sets are concatenated with the category on each sample.

    Args:
        dataset: ``MVTecAD``, ``Visa``, ``RealIAD``, ``Folder`` (one product per sub-folder of ``root``,
            MVTec-AD layout, any image format), another anomalib datamodule that takes ``root`` and
            ``category``, or a datamodule class path.
        root: dataset root as that datamodule expects it (for ``Folder``: the folder holding the products).
        categories: category names, or ``"all"`` (anomalib's list for the dataset; for ``Folder``, every
            sub-folder with a ``train/good`` folder).
        datamodules: per-category datamodules built by you, e.g. mixing MVTecAD categories and Folder products;
            the category name is the datamodule's ``category`` (or its ``name`` where that is empty).
        dataset_kwargs: further arguments for every ``dataset`` datamodule (e.g. ``resolution`` for RealIAD).
        train_batch_size, eval_batch_size, num_workers: loaders (paper: batch 16).
        train_augmentations, val_augmentations, test_augmentations, augmentations: as in anomalib.
        test_split_mode, test_split_ratio: passed to each ``dataset`` datamodule when given.
        val_split_mode, val_split_ratio: validation split of each ``dataset`` category (default: the test set,
            as anomalib's MVTecAD does; the paper has no validation set).
        seed: seed of the random splits.
        shots: few-shot training: keep this many normal training images per category (``None``: all). Each
            category is wrapped in :class:`~anomalib_dinomaly.data.FewShot`, so class-separated runs use it too.
        shot_seed: seed of the few-shot draw (default 1, the Dinomaly2 preview's); per category, the same images
            for the same seed whatever the other categories, the worker count or the file order.
        shot_augmentation: with ``shots``, augment the training images as the Dinomaly2 preview's few-shot
            script does (:func:`~anomalib_dinomaly.data.few_shot_augmentation`); validation and test unchanged.

    Raises:
        ValueError: nothing to load, an unknown dataset or category, a category given twice, ``shots`` < 1,
            or ``train_augmentations`` together with the few-shot augmentation. At setup: a category with
            fewer normal training images than ``shots``.
    """

    def __init__(
        self,
        dataset: str | None = None,
        root: str | Path | None = None,
        categories: list[str] | str = "all",
        datamodules: list[AnomalibDataModule] | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
        train_batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str | None = None,
        test_split_ratio: float | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        shots: int | None = None,
        shot_seed: int = DEFAULT_SHOT_SEED,
        shot_augmentation: bool = True,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.shots = shots
        self.shot_seed = shot_seed
        self.shot_augmentation = shot_augmentation
        self._check_shot_arguments()
        if dataset is None and not datamodules:
            msg = "MultiClass needs `dataset` (with `root` and `categories`) or a list of `datamodules`."
            raise ValueError(msg)
        split_kwargs = {
            "test_split_mode": test_split_mode,
            "test_split_ratio": test_split_ratio,
            "val_split_mode": val_split_mode,
            "val_split_ratio": val_split_ratio,
            "seed": seed,
        }
        children: list[tuple[str, AnomalibDataModule]] = []
        if dataset is not None:
            children += self._build(dataset, root, categories, dataset_kwargs or {}, split_kwargs)
        for datamodule in datamodules or []:
            children.append((datamodule.category or datamodule.name, datamodule))
        names = [name for name, _ in children]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            msg = f"Categories {repeated} appear more than once; give each datamodule a distinct category/name."
            raise ValueError(msg)
        kinds = {type(datamodule).__name__ for _, datamodule in children}
        self._name = kinds.pop() if len(kinds) == 1 else "MultiClass"
        if shots is not None:
            children = [(name, FewShot(dm, shots, shot_seed, shot_augmentation)) for name, dm in children]
        self.datamodules: dict[str, AnomalibDataModule] = dict(children)
        self.categories: list[str] = names
        self.category = UNIFIED

    @staticmethod
    def _build(
        dataset: str,
        root: str | Path | None,
        categories: list[str] | str,
        dataset_kwargs: dict[str, Any],
        split_kwargs: dict[str, Any],
    ) -> list[tuple[str, AnomalibDataModule]]:
        datamodule_class = resolve_datamodule_class(dataset)
        is_folder = datamodule_class is ProductFolder
        if is_folder and root is None:
            msg = "dataset Folder needs `root`, the folder holding one sub-folder per product."
            raise ValueError(msg)
        available = find_products(root) if is_folder else known_categories(dataset)
        if isinstance(categories, str):
            if categories != "all":
                categories = [categories]
            elif available is None:
                msg = f"categories 'all' is not known for {dataset}; list the categories."
                raise ValueError(msg)
            else:
                categories = list(available)
        if not categories:
            msg = "categories is empty."
            raise ValueError(msg)
        unknown = [name for name in categories if available is not None and name not in available]
        if unknown:
            where = f"folders in {root}" if is_folder else f"{dataset} categories"
            msg = f"Unknown categories {unknown}; available {where}: {list(available)}."
            raise ValueError(msg)
        accepted = inspect.signature(datamodule_class.__init__).parameters
        common = {key: value for key, value in split_kwargs.items() if value is not None and key in accepted}
        children = []
        for name in categories:
            kwargs = {**common, **dataset_kwargs}
            if is_folder:
                kwargs |= {"root": Path(root) / name, "name": name}
            else:
                kwargs |= {"category": name} | ({"root": root} if root is not None else {})
            children.append((name, datamodule_class(**kwargs)))
        return children

    @property
    def name(self) -> str:
        """The common datamodule name (e.g. ``MVTecAD``), or ``MultiClass`` for a mix."""
        return self._name

    def prepare_data(self) -> None:
        """Let each category's datamodule check (and, where anomalib does so, download) its data."""
        for datamodule in self.datamodules.values():
            datamodule.prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        for datamodule in self.datamodules.values():
            datamodule.setup()
        self.train_data = self._concat("train_data", required=True)
        self.test_data = self._concat("test_data", required=True)
        val_data = self._concat("val_data", required=False)
        if val_data is not None:
            self.val_data = val_data

    def _concat(self, subset: str, required: bool) -> MultiClassDataset | None:
        present = {name: getattr(dm, subset) for name, dm in self.datamodules.items() if hasattr(dm, subset)}
        if len(present) == len(self.datamodules):
            return MultiClassDataset(present)
        if present or required:
            missing = sorted(set(self.datamodules) - set(present))
            msg = f"Categories {missing} have no {subset}; give every category the same split settings."
            raise ValueError(msg)
        return None

    def _create_test_split(self) -> None:
        """Nothing to do: each category's datamodule made its own test split."""

    def _create_val_split(self) -> None:
        """Nothing to do: each category's datamodule made its own validation split."""
