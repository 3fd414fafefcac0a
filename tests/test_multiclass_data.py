"""MultiClass: anomalib datasets of several categories in one datamodule, category kept per sample."""

from __future__ import annotations

import pytest
from anomalib.data import MVTecAD
from PIL import Image
from torch.utils.data import RandomSampler

from anomalib_dinomaly.data import CategoryImageBatch, MultiClass, ProductFolder


@pytest.fixture(scope="module")
def mixed(mvtec_root, magnetic_tile_root) -> MultiClass:
    datamodule = MultiClass(
        datamodules=[MVTecAD(root=mvtec_root, category="bottle"), ProductFolder(root=magnetic_tile_root)],
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    datamodule.setup()
    return datamodule


def test_concatenates_categories_with_their_own_splits(mixed):
    assert mixed.categories == ["bottle", "magnetic_tile"]
    assert (mixed.name, mixed.category) == ("MultiClass", "unified")
    assert mixed.train_data.category_counts() == {"bottle": 20, "magnetic_tile": 20}
    assert mixed.test_data.category_counts() == {"bottle": 11, "magnetic_tile": 11}
    assert set(mixed.train_data.samples.label_index) == {0}
    # validation = test set per category (anomalib's MVTecAD default), categories one after another
    assert mixed.val_data.samples["category"].tolist() == ["bottle"] * 11 + ["magnetic_tile"] * 11
    assert isinstance(mixed.train_dataloader().sampler, RandomSampler)


def test_items_carry_their_category_and_mix_grey_with_colour(mixed, magnetic_tile_root):
    grey = next(iter((magnetic_tile_root / "train" / "good").iterdir()))
    assert Image.open(grey).mode == "L"
    batch = next(iter(mixed.test_dataloader()))
    assert isinstance(batch, CategoryImageBatch)
    assert batch.category == ["bottle"] * 8
    last = list(mixed.test_dataloader())[-1]
    assert last.category == ["magnetic_tile"] * 6
    assert last.image.shape[1] == 3 and last.gt_mask.shape[0] == 6
    assert [item.category for item in last] == last.category
    assert last.to_numpy().category == last.category


def test_benchmark_form_and_folder_products(mvtec_root):
    benchmark = MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle"], num_workers=0)
    assert (benchmark.name, benchmark.categories) == ("MVTecAD", ["bottle"])
    assert MultiClass(dataset="MVTecAD", root=mvtec_root).categories[:2] == ["bottle", "cable"]
    folders = MultiClass(dataset="Folder", root=mvtec_root, categories="all", num_workers=0)
    folders.setup()
    assert folders.categories == ["bottle"]
    assert len(folders.train_data) == 20


def test_clear_errors(mvtec_root):
    with pytest.raises(ValueError, match=r"Unknown categories \['grd'\]"):
        MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle", "grd"])
    with pytest.raises(ValueError, match="Unknown dataset 'MVTec'"):
        MultiClass(dataset="MVTec", root=mvtec_root)
    with pytest.raises(ValueError, match="more than once"):
        MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle"], datamodules=[MVTecAD(root=mvtec_root)])
    with pytest.raises(ValueError, match="needs `dataset`"):
        MultiClass()
    with pytest.raises(FileNotFoundError, match="train/good"):
        ProductFolder(root=mvtec_root)
