"""Small test data for end-to-end tests: fast copies of the shared MVTec-AD ``bottle`` images (written to pytest
tmp dirs) and the CLI data section over the shared products."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

DEFECTS = ("broken_large", "broken_small", "contamination")


def make_small_bottle(
    source: Path,
    destination: Path,
    size: int = 128,
    train: int = 8,
    test_good: int = 4,
    per_defect: int = 2,
) -> Path:
    """Write an MVTec-layout ``bottle`` category with images and masks resized to ``size`` x ``size``.

    Args:
        source: the shared ``mvtec_ad`` folder (holding ``bottle``).
        destination: folder to create; it will hold ``bottle/{train,test,ground_truth}``.
        size: side of the written images (masks resized with nearest neighbour).
        train, test_good, per_defect: how many normal training, normal test and anomalous test images per defect.

    Returns:
        ``destination`` (the ``root`` to give anomalib's ``MVTecAD``).
    """
    bottle, out = source / "bottle", destination / "bottle"
    selection = [(f"train/good/{i:03d}.png", None) for i in range(train)]
    selection += [(f"test/good/{i:03d}.png", None) for i in range(test_good)]
    selection += [
        (f"test/{defect}/{i:03d}.png", f"ground_truth/{defect}/{i:03d}_mask.png")
        for defect in DEFECTS
        for i in range(per_defect)
    ]
    for image_name, mask_name in selection:
        for name, resample in ((image_name, Image.BILINEAR), (mask_name, Image.NEAREST)):
            if name is None:
                continue
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(bottle / name) as image:
                image.resize((size, size), resample).save(target)
    return destination


def multiclass_data_config(mvtec_root: Path, magnetic_tile_root: Path) -> dict:
    """CLI ``data`` section: MultiClass over the MVTec-AD bottle and the magnetic-tile product folder."""
    return {
        "class_path": "anomalib_dinomaly.data.MultiClass",
        "init_args": {
            "train_batch_size": 8,
            "eval_batch_size": 8,
            "num_workers": 0,
            "datamodules": [
                {"class_path": "anomalib.data.MVTecAD", "init_args": {"root": str(mvtec_root), "category": "bottle"}},
                {"class_path": "anomalib_dinomaly.data.ProductFolder", "init_args": {"root": str(magnetic_tile_root)}},
            ],
        },
    }
