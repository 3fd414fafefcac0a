"""Few-shot training: k normal images per category, drawn reproducibly, and the Dinomaly2 preview's augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback
from torchvision.transforms.v2 import (
    Compose,
    Normalize,
    RandomChoice,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
)

from anomalib_dinomaly import Dinomaly, Dinomaly2
from anomalib_dinomaly.data import FewShot, MultiClass, ProductFolder, few_shot_augmentation, select_shots
from anomalib_dinomaly.metrics import CategoryTable
from anomalib_dinomaly.separated import train_separated
from tests.conftest import REPO, TINY_MODEL
from tests.test_cli import ANOMALIB, TINY_ARGS, run
from tests.test_dinomaly2 import TINY_DINOV3_MODEL

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def mixed(mvtec_root, magnetic_tile_root, **kwargs) -> MultiClass:
    datamodule = MultiClass(
        datamodules=[MVTecAD(root=mvtec_root, category="bottle"), ProductFolder(root=magnetic_tile_root)],
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        **kwargs,
    )
    datamodule.setup()
    return datamodule


def names(dataset, category: str) -> list[str]:
    samples = dataset.samples
    return sorted(path.rsplit("/", 1)[-1] for path in samples.loc[samples["category"] == category, "image_path"])


def test_selection_is_reproducible_per_category_and_seeded(mvtec_root, magnetic_tile_root):
    first = mixed(mvtec_root, magnetic_tile_root, shots=3)
    again = mixed(mvtec_root, magnetic_tile_root, shots=3, shot_seed=1)
    other_seed = mixed(mvtec_root, magnetic_tile_root, shots=3, shot_seed=2)
    assert first.train_data.category_counts() == {"bottle": 3, "magnetic_tile": 3}
    for category in ("bottle", "magnetic_tile"):
        assert names(first.train_data, category) == names(again.train_data, category)
        assert names(first.train_data, category) != names(other_seed.train_data, category)
    # A category draws the same images alone, in another order, or wrapped on its own.
    alone = MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle"], shots=3, num_workers=0)
    alone.setup()
    assert names(alone.train_data, "bottle") == names(first.train_data, "bottle")
    single = FewShot(MVTecAD(root=mvtec_root, category="bottle"), shots=3)
    single.setup()
    single_names = sorted(path.rsplit("/", 1)[-1] for path in single.train_data.samples.image_path)
    assert single_names == names(first.train_data, "bottle")
    assert (single.name, single.category) == ("MVTecAD", "bottle")
    full = MVTecAD(root=mvtec_root, category="bottle")
    full.setup()
    shuffled = full.train_data.samples.sample(frac=1.0, random_state=0)
    assert set(select_shots(shuffled, 3, 1, "bottle").image_path) == set(single.train_data.samples.image_path)


def test_only_the_shots_reach_training_and_evaluation_sets_are_unchanged(mvtec_root, magnetic_tile_root):
    few = mixed(mvtec_root, magnetic_tile_root, shots=2)
    everything = mixed(mvtec_root, magnetic_tile_root)
    chosen = set(few.train_data.samples.image_path)
    assert len(chosen) == 4 and chosen < set(everything.train_data.samples.image_path)
    seen = [path for batch in few.train_dataloader() for path in batch.image_path]
    assert sorted(seen) == sorted(chosen)
    few.num_workers = 2
    assert sorted(path for batch in few.train_dataloader() for path in batch.image_path) == sorted(chosen)
    for subset in ("val_data", "test_data"):
        assert getattr(few, subset).samples.equals(getattr(everything, subset).samples)
    # the class-separated runner trains each wrapped category on its own shots
    assert {name: len(dm.train_data) for name, dm in few.datamodules.items()} == {"bottle": 2, "magnetic_tile": 2}
    assert few.name == "MultiClass"


def test_clear_errors_for_bad_shots(mvtec_root):
    too_many = MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle"], shots=21, num_workers=0)
    with pytest.raises(ValueError, match=r"Category 'bottle' has 20 normal training images, fewer than shots=21"):
        too_many.setup()
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        MultiClass(dataset="MVTecAD", root=mvtec_root, categories=["bottle"], shots=0)
    with pytest.raises(ValueError, match="train_augmentations"):
        FewShot(MVTecAD(root=mvtec_root, category="bottle", train_augmentations=Resize(64)), shots=2)
    with pytest.raises(ValueError, match="square crop"):
        few_shot_augmentation(Dinomaly.configure_pre_processor((56, 70), (42, 56)).transform)
    with pytest.raises(ValueError, match="fixed"):
        few_shot_augmentation(Compose([Normalize(**IMAGENET)]))


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """(3, H, W): channel 0 the row and channel 1 the column (0..1, pixel centres), channel 2 constant."""
    rows = (torch.arange(height) + 0.5) / height
    cols = (torch.arange(width) + 0.5) / width
    grid = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([*grid, torch.ones(height, width)])


@pytest.mark.parametrize(("image_size", "crop_size"), [(112, 98), (512, 448)])
def test_augmentation_statistics(image_size, crop_size):
    """Shapes, area fraction, aspect ratio and all eight quarter-turn / flip orientations occur."""
    pre_processor = Dinomaly.configure_pre_processor(image_size, crop_size).transform
    augmentation = few_shot_augmentation(pre_processor)
    image = coordinate_image(image_size, image_size)  # already at the resize size: no resampling before the crop
    torch.manual_seed(0)
    orientations, fractions, ratios = set(), [], []
    for _ in range(64):
        padded = augmentation(image)
        assert padded.shape == (3, image_size, image_size)
        crop = pre_processor(padded.unsqueeze(0))[0]
        assert crop.shape == (3, crop_size, crop_size)
        crop = crop * torch.tensor(IMAGENET["std"])[:, None, None] + torch.tensor(IMAGENET["mean"])[:, None, None]
        # the padding is cut away exactly: only image content (channel 2 == 1) is left
        assert torch.allclose(crop[2], torch.ones(crop_size, crop_size), atol=1e-5)
        rows, cols = crop[0], crop[1]
        # which image axis runs along the crop's rows / columns, and in which direction
        row_axis = "r" if (rows[-1, 0] - rows[0, 0]).abs() > (cols[-1, 0] - cols[0, 0]).abs() else "c"
        down = crop[0 if row_axis == "r" else 1]
        across = crop[1 if row_axis == "r" else 0]
        orientations.add((row_axis, bool(down[-1, 0] > down[0, 0]), bool(across[0, -1] > across[0, 0])))
        height = (rows.max() - rows.min()).item() * image_size + 1
        width = (cols.max() - cols.min()).item() * image_size + 1
        fractions.append(height * width / image_size**2)
        ratios.append(width / height)
    assert len(orientations) == 8
    target = (crop_size / image_size) ** 2
    assert all(abs(fraction - target) < 0.03 for fraction in fractions), (min(fractions), max(fractions))
    assert 0.93 < min(ratios) and max(ratios) < 1.07 and max(ratios) - min(ratios) > 0.02


@pytest.mark.parametrize(("image_size", "crop_size"), [(112, 98), (113, 98), (512, 448)])
def test_seeded_draw_equals_the_preview_composition(image_size, crop_size):
    """Through the model's pre-processor a training image sees exactly Resize -> RandomResizedCrop -> quarter
    turn -> flips -> Normalize, once (also where the margin around the crop is odd)."""
    pre_processor = Dinomaly.configure_pre_processor(image_size, crop_size).transform
    scale = (crop_size / image_size) ** 2
    preview = Compose([
        Resize((image_size, image_size)),
        RandomResizedCrop(crop_size, scale=(scale, scale), ratio=(0.95, 1.05)),
        RandomChoice([RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
        RandomHorizontalFlip(),
        RandomVerticalFlip(),
        Normalize(**IMAGENET),
    ])
    ours = few_shot_augmentation(pre_processor)
    image = torch.rand(3, 150, 130)
    for seed in range(6):
        torch.manual_seed(seed)
        expected = preview(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(pre_processor(ours(image)), expected, rtol=0, atol=0)


def test_attached_model_augments_training_only(mvtec_root, magnetic_tile_root):
    model = Dinomaly(**TINY_MODEL)
    few = mixed(mvtec_root, magnetic_tile_root, shots=2)
    plain = mixed(mvtec_root, magnetic_tile_root)
    for datamodule in (few, plain):
        datamodule.trainer = SimpleNamespace(model=model, lightning_module=model)
        datamodule.setup()
    transform = model.pre_processor.transform
    torch.manual_seed(0)
    train = next(iter(few.train_dataloader()))
    assert train.image.shape[-2:] == (112, 112)  # padded to the resize size, cropped back by the pre-processor
    margin = (112 - 98) // 2
    assert train.image[..., :margin, :].abs().max() == 0 and train.image[..., -margin:].abs().max() == 0
    assert train.image[..., margin:-margin, margin:-margin].abs().amax(dim=(1, 2, 3)).min() > 0
    assert any(isinstance(step, RandomResizedCrop) for step in few.train_data.augmentations.transforms)
    assert plain.train_data.augmentations == model.pre_processor.transform.transforms[0]  # anomalib's resize only
    assert transform(train.image).shape[-2:] == (98, 98)
    for subset in ("val_dataloader", "test_dataloader"):
        for few_batch, plain_batch in zip(getattr(few, subset)(), getattr(plain, subset)(), strict=True):
            assert few_batch.image_path == plain_batch.image_path
            torch.testing.assert_close(few_batch.image, plain_batch.image, rtol=0, atol=0)
            torch.testing.assert_close(few_batch.gt_mask, plain_batch.gt_mask, rtol=0, atol=0)


class RecordTrainingBatches(Callback):
    """Keeps the path and model-input size of every training image (after the model's pre-processor)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: set[tuple[int, int]] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.paths += batch.image_path
        self.sizes.add(tuple(batch.image.shape[-2:]))


@pytest.mark.slow
def test_engine_fit_unified_and_class_separated_with_shots(tmp_path, mvtec_root, magnetic_tile_root):
    torch.manual_seed(0)
    data = MultiClass(
        datamodules=[MVTecAD(root=mvtec_root, category="bottle"), ProductFolder(root=magnetic_tile_root)],
        train_batch_size=2,
        eval_batch_size=11,
        num_workers=0,
        shots=2,
    )
    record = RecordTrainingBatches()
    engine = Engine(default_root_dir=tmp_path, max_steps=2, logger=False, callbacks=[record])
    model = Dinomaly(**TINY_MODEL, warmup_steps=1)
    engine.fit(model=model, datamodule=data)
    assert any(isinstance(step, RandomResizedCrop) for step in data.train_data.augmentations.transforms)
    chosen = set(data.train_data.samples.image_path)
    assert len(chosen) == 4 and set(record.paths) <= chosen and len(record.paths) == 4
    assert record.sizes == {(98, 98)}
    engine.test(model=model, datamodule=data)
    assert model.evaluator.table.categories == ["bottle", "magnetic_tile"]

    separated = RecordTrainingBatches()
    table = train_separated(
        Dinomaly(**TINY_MODEL, warmup_steps=1), data, tmp_path, max_steps=1, logger=False, callbacks=[separated]
    )
    assert table.categories == ["bottle", "magnetic_tile"]
    assert len(separated.paths) == 2 * 2 and set(separated.paths) <= chosen  # one step of 2 shots per category
    assert separated.sizes == {(98, 98)}


@pytest.mark.slow
def test_cli_few_shot_config(tmp_path, mvtec_root):
    args = [
        ANOMALIB, "train", "--config", str(REPO / "configs" / "dinomaly_fewshot_mvtec.yaml"), *TINY_ARGS,
        "--data.root", str(mvtec_root), "--data.categories", "[bottle]", "--data.shots", "2",
        "--data.train_batch_size", "2", "--data.eval_batch_size", "11", "--data.num_workers", "0",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.accelerator", "cpu",
        "--trainer.logger", "false", "--default_root_dir", "results",
    ]  # fmt: skip
    output = run(args, cwd=tmp_path, timeout=400)
    assert "Few-shot training: bottle keeps 2 of 20 training images (seed 1)" in output
    table = CategoryTable.read_csv(tmp_path / "results/DinomalyPlugin/MVTecAD/unified/v0/per_category_metrics.csv")
    assert table.categories == ["bottle"]


@pytest.mark.slow
def test_dinomaly2_few_shot_from_the_cli_and_with_a_dinov3_encoder(tmp_path, mvtec_root, magnetic_tile_root):
    """Dinomaly2 with shots: the CLI on both products (the CLI run of Dinomaly2 by name: its checkpoint and table),
    and Engine().fit with a patch-16 DINOv3 geometry."""
    data = {
        "class_path": "anomalib_dinomaly.data.MultiClass",
        "init_args": {
            "datamodules": [
                {"class_path": "anomalib.data.MVTecAD", "init_args": {"root": str(mvtec_root), "category": "bottle"}},
                {"class_path": "anomalib_dinomaly.data.ProductFolder", "init_args": {"root": str(magnetic_tile_root)}},
            ],
            "train_batch_size": 4,
            "eval_batch_size": 11,
            "num_workers": 0,
        },
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": data}))
    args = [
        ANOMALIB, "train", "--model", "Dinomaly2", *TINY_ARGS, "--config", "data.yaml", "--data.shots", "2",
        "--trainer.max_steps", "1", "--trainer.val_check_interval", "1", "--trainer.check_val_every_n_epoch", "null",
        "--trainer.logger", "false", "--default_root_dir", "results",
    ]  # fmt: skip
    output = run(args, cwd=tmp_path, timeout=400)
    assert "max_steps=1" in output
    for category in ("bottle", "magnetic_tile"):
        assert f"Few-shot training: {category} keeps 2 of 20 training images (seed 1)" in output
    run_dir = tmp_path / "results" / "Dinomaly2Plugin" / "MultiClass" / "unified" / "v0"
    assert (run_dir / "weights" / "lightning" / "model.ckpt").is_file()
    assert CategoryTable.read_csv(run_dir / "per_category_metrics.csv").categories == ["bottle", "magnetic_tile"]

    torch.manual_seed(0)
    model = Dinomaly2(**TINY_DINOV3_MODEL, warmup_steps=1)
    few = MultiClass(datamodules=[MVTecAD(root=mvtec_root, category="bottle"), ProductFolder(root=magnetic_tile_root)],
                     train_batch_size=4, eval_batch_size=11, num_workers=0, shots=2)  # fmt: skip
    record = RecordTrainingBatches()
    engine = Engine(default_root_dir=tmp_path / "dinov3", max_steps=1, logger=False, callbacks=[record])
    engine.fit(model=model, datamodule=few)
    crop = TINY_DINOV3_MODEL["crop_size"]
    assert record.sizes == {(crop, crop)} and set(record.paths) == set(few.train_data.samples.image_path)
    assert 0.0 <= engine.test(model=model, datamodule=few)[0]["image_AUROC"] <= 1.0
