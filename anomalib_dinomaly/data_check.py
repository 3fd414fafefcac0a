"""Check image and mask files before a run, so bad data fails early with the file named.

anomalib reads images with ``PIL.Image.open(path).convert("RGB")`` and masks with ``.convert("L") > 0``
inside the data loader. Some files then fail late and without a name (a truncated PNG or JPEG raises
"image file is truncated" mid-training), and some are read wrongly without any error:

- 16-bit greyscale images (PIL mode ``I;16``), 32-bit integer and float images: ``convert("RGB")``
  clips every value above 255, so a 16-bit image becomes almost white.
- a mask whose size differs from its image: anomalib resizes it with the image or fails to stack
  the batch, so a mask meant for another image or crop can end up silently misaligned.

:class:`DataCheck` (used by :class:`~anomalib_dinomaly.Dinomaly` by default) reads the header of every
image and mask of the run's data sets, verifies that the file is complete, and raises one
:class:`DataCheckError` listing every problem before any training step, so nothing is trained on
bad data and no checkpoint is touched. RGBA, palette, 1-bit, greyscale-with-alpha and CMYK images
are read correctly by anomalib (alpha is ignored) and pass; images smaller than the model input are
upsampled by the pre-processor, which is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

logger = logging.getLogger(__name__)

#: PIL modes whose ``convert("RGB")`` clips values above 255 (16-bit and 32-bit greyscale, float).
CLIPPED_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
MAX_LISTED_PROBLEMS = 20


class DataCheckError(ValueError):
    """Image or mask files that cannot be used as they are; the message lists each file and what to do."""


@dataclass(frozen=True)
class FileInfo:
    """Header facts of a readable image file: ``size`` is (width, height), ``mode`` PIL's mode."""

    size: tuple[int, int]
    mode: str


def inspect_image_file(path: str | Path) -> FileInfo:
    """Open an image file, check that it is complete, and return its size and mode.

    PNG files are verified chunk by chunk (CRC and length, no decompression); JPEG files are
    decoded at 1/8 scale, which reads the whole entropy-coded stream; other formats are decoded.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: the file is not a readable image or is truncated (PIL's message, prefixed by the path).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: file does not exist"
        raise FileNotFoundError(msg)
    try:
        with Image.open(path) as image:
            info = FileInfo(size=image.size, mode=image.mode)
            if image.format == "PNG":
                image.verify()
            elif image.format == "JPEG":
                image.draft(image.mode, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
                image.load()
            else:
                image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        msg = f"{path}: cannot be read as an image ({type(error).__name__}: {error})"
        raise OSError(msg) from error
    return info


def image_file_problem(path: str | Path) -> tuple[str | None, FileInfo | None]:
    """The training rules for one image file: readable, complete, and not a mode that anomalib's reader clips.

    Returns:
        ``(problem, info)``: a message naming the file and what to do (``None`` if the file is fine), and the
        file's header facts when it could be read.
    """
    try:
        image = inspect_image_file(path)
    except OSError as error:
        return f"{error}. Replace or remove the file.", None
    if image.mode in CLIPPED_MODES:
        return (
            f"{path}: {image.mode!r} image (16/32-bit or float). anomalib reads images with PIL's "
            "convert('RGB'), which clips values above 255, so this image would be used almost white. "
            "Convert the images to 8 bit first with one scaling for all of them, e.g. with numpy "
            "(array >> 8).astype('uint8'), or >> 4 for a 12-bit camera."
        ), image
    return None, image


def _check_sample(image_path: str, mask_path: str | None) -> tuple[list[str], tuple[int, int] | None]:
    """Problems of one (image, mask) pair, and the image size (width, height) when readable."""
    problem, image = image_file_problem(image_path)
    if image is None:
        return [problem], None
    problems = [problem] if problem else []
    if mask_path:
        try:
            mask = inspect_image_file(mask_path)
        except OSError as error:
            problems.append(f"{error}. Replace the mask of {image_path} or remove the sample.")
        else:
            if mask.size != image.size:
                problems.append(
                    f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]} (width x height) but its image "
                    f"{image_path} is {image.size[0]}x{image.size[1]}. A mask must have its image's size; "
                    "check that it belongs to this image, and resize it with nearest-neighbour interpolation if it does."
                )
    return problems, image.size


def _samples(dataset: Dataset) -> Iterator[tuple[str, str | None]]:
    """(image path, mask path or None) of every sample of an anomalib data set (``samples`` or ``image_filenames``)."""
    if isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from _samples(part)
        return
    if isinstance(dataset, Subset):
        parent = list(_samples(dataset.dataset))
        if parent:
            yield from (parent[index] for index in dataset.indices)
        return
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in getattr(samples, "columns", ()):
        masks = samples["mask_path"] if "mask_path" in samples.columns else [None] * len(samples)
        for image_path, mask_path in zip(samples["image_path"], masks, strict=True):
            yield str(image_path), (str(mask_path) if isinstance(mask_path, str | Path) and str(mask_path) else None)
        return
    for image_path in getattr(dataset, "image_filenames", ()):
        yield str(image_path), None


def check_samples(
    samples: Iterable[tuple[str, str | None]],
    min_size: tuple[int, int] | None = None,
    workers: int | None = None,
) -> int:
    """Check (image, mask) file pairs; raise one error listing every problem.

    Args:
        samples: (image path, mask path or ``None``) pairs.
        min_size: (height, width) of the model input; smaller images are reported in a warning.
        workers: reader threads (PIL releases the GIL while decoding); default ``min(8, cpu count)``.

    Returns:
        The number of samples checked.

    Raises:
        DataCheckError: at least one file is missing, unreadable, truncated, 16/32-bit, or a mask's size
            differs from its image's.
    """
    samples = list(samples)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda pair: _check_sample(*pair), samples))
    problems = [problem for found, _ in results for problem in found]
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        msg = f"{len(problems)} problem(s) in the data set files:\n  {listed}{more}"
        raise DataCheckError(msg)
    if min_size is not None:
        height, width = min_size
        small = [
            (path, size)
            for (path, _), (_, size) in zip(samples, results, strict=True)
            if size is not None and (size[0] < width or size[1] < height)
        ]
        if small:
            path, size = small[0]
            logger.warning(
                "%d image(s) are smaller than the model input %dx%d (height x width), e.g. %s (%dx%d); the "
                "pre-processor upsamples them, which blurs small defects. Use a smaller image_size/crop_size if "
                "most images are this small.",
                len(small), height, width, path, size[1], size[0],
            )
    return len(samples)


class DataCheck(Callback):
    """Lightning callback: check the files of every data set a run uses before the run starts.

    Data sets come from the datamodule at ``setup`` (so validation files are checked before training)
    and from the data loaders at the start of each stage (data loaders passed without a datamodule).
    Each file is checked once per callback. Data sets that are not anomalib image data sets (no
    ``samples`` table or ``image_filenames``) are skipped.
    """

    _DATAMODULE_SETS = {"fit": ("train_data", "val_data"), "validate": ("val_data",), "test": ("test_data",)}

    def __init__(self) -> None:
        super().__init__()
        self._checked: set[tuple[str, str | None]] = set()

    def _check(self, datasets: Iterable[Any], pl_module: LightningModule) -> None:
        pending = []
        for dataset in datasets:
            if isinstance(dataset, DataLoader):
                dataset = dataset.dataset
            if isinstance(dataset, Dataset):
                pending.extend(sample for sample in _samples(dataset) if sample not in self._checked)
        pending = list(dict.fromkeys(pending))
        if not pending:
            return
        start = time.perf_counter()
        check_samples(pending, min_size=_input_size(pl_module))
        self._checked.update(pending)
        logger.info("Checked %d image files in %.1f s.", len(pending), time.perf_counter() - start)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the datamodule's data sets of this stage (an empty training set is named too)."""
        datamodule = trainer.datamodule
        if datamodule is not None:
            stage = getattr(stage, "value", stage)
            if stage == "fit":
                check_training_set_not_empty(datamodule)
            names = self._DATAMODULE_SETS.get(stage, ())
            self._check((getattr(datamodule, name, None) for name in names), pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """When reading an image fails mid-run (a file changed after the check), name the files that did.

        The data loader's error does not say which file it was reading; the files checked at the start are
        checked again and the ones that are now unusable are added to the error as a note.
        """
        del trainer, pl_module
        if not isinstance(exception, OSError | SyntaxError | ValueError) or isinstance(exception, DataCheckError):
            return
        if not self._checked or not hasattr(exception, "add_note"):
            return
        samples = sorted(self._checked, key=lambda pair: (pair[0], pair[1] or ""))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = [problem for found, _ in pool.map(lambda pair: _check_sample(*pair), samples) for problem in found]
        if problems:
            listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
            exception.add_note(
                f"These files were fine when the run started and are not now (changed during the run):\n  {listed}\n"
                "Replace them, then resume from the last checkpoint (--ckpt_path .../weights/lightning/model.ckpt)."
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._check(_as_list(trainer.train_dataloader), pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._check(_as_list(trainer.val_dataloaders), pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._check(_as_list(trainer.test_dataloaders), pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._check(_as_list(trainer.predict_dataloaders), pl_module)


def _training_folder(datamodule: Any, dataset: Any) -> str:  # noqa: ANN401
    """Where the datamodule looks for normal training images, as well as it can be told."""
    folder = getattr(dataset, "root_category", None)  # MVTecAD, Visa, ...
    if folder is not None:
        return f"{Path(folder) / 'train' / 'good'}"
    normal_dir = getattr(datamodule, "normal_dir", None)  # Folder
    if normal_dir is not None:
        root = getattr(datamodule, "root", None)
        folders = normal_dir if isinstance(normal_dir, list | tuple) else [normal_dir]
        return ", ".join(str(Path(root) / folder if root is not None else folder) for folder in folders)
    root, category = getattr(datamodule, "root", None), getattr(datamodule, "category", None)
    return str(Path(root) / category) if root is not None and category else type(datamodule).__name__


def check_training_set_not_empty(datamodule: Any) -> None:  # noqa: ANN401
    """Refuse a datamodule whose training set has no image, naming the folder it read.

    Raises:
        DataCheckError: no training image.
    """
    dataset = getattr(datamodule, "train_data", None)
    if dataset is None or len(dataset) > 0:
        return
    folder = _training_folder(datamodule, dataset)
    hint = ""
    if getattr(dataset, "root_category", None) is not None:
        others = [path.name for path in Path(folder).glob("*") if path.is_file() and path.suffix.lower() != ".png"]
        if others:
            hint = (
                f" It holds {len(others)} file(s) of other types (e.g. {others[0]}), which {type(datamodule).__name__} "
                "does not read (only .png): convert them, or use anomalib_dinomaly.data.ProductFolder (any format)."
            )
    msg = (
        f"The training set is empty: no image in {folder}.{hint} Put the normal (defect-free) training images "
        "there, or check the data root and category (--data.root, --data.category)."
    )
    raise DataCheckError(msg)


def check_mask_folders(datamodule: Any) -> None:  # noqa: ANN401
    """Refuse an MVTec-layout category whose ``test/<defect>`` folder has no ``ground_truth/<defect>`` folder.

    Applies to datamodules with ``root`` and ``category`` (MVTecAD and the like) whose category folder holds
    ``test`` and ``ground_truth``, and to each category of a :class:`~anomalib_dinomaly.data.MultiClass`.
    Runs before the datamodule is set up, where anomalib would fail with a pandas error naming nothing.

    Raises:
        DataCheckError: listing each missing mask folder.
    """
    children = getattr(datamodule, "datamodules", None)
    if isinstance(children, dict):
        for child in children.values():
            check_mask_folders(child)
        return
    root, category = getattr(datamodule, "root", None), getattr(datamodule, "category", None)
    if root is None or not isinstance(category, str) or not category:
        return
    test, masks = Path(root) / category / "test", Path(root) / category / "ground_truth"
    if not (test.is_dir() and masks.is_dir()):
        return
    defects = sorted(path.name for path in test.iterdir() if path.is_dir() and path.name != "good" and any(path.iterdir()))
    missing = [masks / defect for defect in defects if not (masks / defect).is_dir()]
    if missing:
        listed = "\n  ".join(f"{folder} is missing (masks of {test / folder.name})" for folder in missing)
        msg = (
            f"{len(missing)} mask folder(s) missing:\n  {listed}\nAdd the masks, one per test image, named after it "
            "(000.png -> 000_mask.png), or remove that defect's test folder."
        )
        raise DataCheckError(msg)


def _as_list(loaders: Any) -> list[Any]:  # noqa: ANN401
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, list | tuple):
        return list(loaders)
    return [loaders]


def _input_size(pl_module: LightningModule) -> tuple[int, int] | None:
    try:
        size = pl_module.input_size
    except Exception:  # noqa: BLE001 - a custom pre-processor may not accept a dummy image; the warning is optional
        return None
    return tuple(int(s) for s in size) if size is not None else None
