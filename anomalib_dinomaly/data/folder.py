"""One product in the MVTec-AD folder layout, with any image format, through anomalib's ``Folder``.

anomalib's ``MVTecAD`` reads ``.png`` only, and ``Folder`` wants every defect folder listed by hand.
``ProductFolder`` finds them itself in the usual layout::

    <root>/train/good/*            normal training images
    <root>/test/good/*             normal test images
    <root>/test/<defect>/*         anomalous test images, one folder per defect type
    <root>/ground_truth/<defect>/* masks named after their image (``000.png`` or ``000_mask.png``)

Without ``ground_truth`` the product is evaluated image-level only (classification).
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data import Folder
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

__all__ = ["ProductFolder", "find_products"]

NORMAL = "good"


def find_products(root: str | Path) -> list[str]:
    """Names of the sub-folders of ``root`` that hold a ``train/good`` folder, sorted.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no product.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"Dataset root {root} does not exist."
        raise FileNotFoundError(msg)
    products = sorted(path.name for path in root.iterdir() if (path / "train" / NORMAL).is_dir())
    if not products:
        msg = f"No product folder with a train/{NORMAL} sub-folder found in {root}."
        raise FileNotFoundError(msg)
    return products


class ProductFolder(Folder):
    """anomalib ``Folder`` datamodule for one product in the MVTec-AD layout (any image extension).

    Args:
        root: the product folder (holding ``train``, ``test``, optionally ``ground_truth``).
        name: product name used as category and in the results path; defaults to the folder name.
        extensions: image file extensions to read; ``None`` reads every format anomalib knows.
        train_batch_size, eval_batch_size, num_workers, *_augmentations, test_split_mode, test_split_ratio,
        val_split_mode, val_split_ratio, seed: as in anomalib's ``Folder`` (but the validation set is the
            test set by default, as in ``MVTecAD``).

    Raises:
        FileNotFoundError: a required folder is missing.
        ValueError: some defect folders have masks and others do not.
    """

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        extensions: tuple[str, ...] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
    ) -> None:
        root = Path(root)
        train, test, masks = root / "train" / NORMAL, root / "test", root / "ground_truth"
        for folder in (train, test):
            if not folder.is_dir():
                msg = f"{folder} does not exist: ProductFolder expects {root}/train/{NORMAL} and {root}/test/<type>."
                raise FileNotFoundError(msg)
        defects = sorted(path.name for path in test.iterdir() if path.is_dir() and path.name != NORMAL)
        with_masks = [defect for defect in defects if (masks / defect).is_dir()]
        if with_masks and with_masks != defects:
            missing = sorted(set(defects) - set(with_masks))
            msg = f"{masks} has no mask folder for the defect types {missing}; add them or remove ground_truth."
            raise ValueError(msg)
        super().__init__(
            name=name or root.name,
            root=root,
            normal_dir=Path("train") / NORMAL,
            abnormal_dir=[Path("test") / defect for defect in defects] or None,
            normal_test_dir=Path("test") / NORMAL if (test / NORMAL).is_dir() else None,
            mask_dir=[Path("ground_truth") / defect for defect in with_masks] or None,
            extensions=extensions,
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
        self.category = self.name
