"""Shared fixtures: paths to the data in ../shared and small random encoders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINOMALY_SHARED", REPO.parent / "shared"))
MVTEC_ROOT = SHARED / "data" / "mvtec_ad"
MAGNETIC_TILE_ROOT = SHARED / "data" / "magnetic_tile_defects" / "magnetic_tile"
GOLDEN = SHARED / "golden" / "official_a"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share the cores: one thread each, inherited by the CLI and DDP processes they start.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

#: A small random encoder that keeps Dinomaly's structure (4 registers, 8 target layers, 2 groups).
TINY_ENCODER = {"pretrained": False, "embed_dim": 48, "depth": 10, "num_heads": 3}
#: That encoder on small inputs (resize 112, crop 98 = 7 x 14): the Dinomaly arguments of the end-to-end tests.
TINY_MODEL = {**TINY_ENCODER, "image_size": 112, "crop_size": 98}


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (set DINOMALY_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    _require(MVTEC_ROOT / "bottle")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def magnetic_tile_root() -> Path:
    return _require(MAGNETIC_TILE_ROOT)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(GOLDEN)


@pytest.fixture(scope="module")
def reuse_onnx_traces():
    """Within a test module, trace each (model weights, example input, export arguments) to ONNX once.

    ``torch.onnx.export`` (the dynamo exporter) dominates an export's time; anomalib's ONNX and OpenVINO exports
    (every precision) start from it. A repeat with the same model, unchanged weights and the same arguments gets a
    copy of the file the first call wrote (and its external data); everything after the trace (our geometry
    metadata, OpenVINO conversion, compression, saving, inference) still runs for each export.
    """
    import hashlib
    import shutil
    import tempfile

    import torch

    export = torch.onnx.export
    store = Path(tempfile.mkdtemp(prefix="onnx-traces-"))
    written: dict[tuple, tuple[Path, object]] = {}

    def fingerprint(model: torch.nn.Module, args: tuple, f: str, kwargs: dict) -> tuple:
        digest = hashlib.sha256()
        for name, value in model.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        shapes = tuple((tuple(arg.shape), str(arg.dtype)) for arg in args)
        return id(model), model.training, digest.hexdigest(), shapes, Path(f).name, repr(sorted(kwargs.items()))

    def traced_once(model, args, f, **kwargs):  # noqa: ANN001, ANN202 - torch.onnx.export's signature
        key = fingerprint(model, args, f, kwargs)
        if key not in written:
            program = export(model, args, f, **kwargs)
            copy = store / str(len(written))
            copy.mkdir()
            for file in Path(f).parent.glob(Path(f).name + "*"):  # model.onnx and its external data, model.onnx.data
                shutil.copy2(file, copy / file.name)
            written[key] = (copy, program)
            return program
        copy, program = written[key]
        for file in copy.iterdir():
            shutil.copy2(file, Path(f).parent / file.name)
        return program

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.onnx, "export", traced_once)
        yield written
    shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def small_bottle_run(mvtec_root, tmp_path_factory):
    """One tiny Dinomaly trained by anomalib's Engine for two steps on the small bottle copy, shared by the tests that
    need a finished run: ``checkpoint`` (path), ``model`` (the trained module), ``engine``, ``data`` (its ``root``).
    Tests read them; none trains or edits them further."""
    from types import SimpleNamespace

    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_dinomaly import Dinomaly
    from tests.small_data import make_small_bottle

    root = tmp_path_factory.mktemp("small_bottle_run")
    data = make_small_bottle(mvtec_root, root / "data")
    seed_everything(0)
    model = Dinomaly(**TINY_MODEL, visualizer=False, warmup_steps=1)
    engine = Engine(accelerator="cpu", max_steps=2, default_root_dir=root / "runs", enable_progress_bar=False)
    datamodule = MVTecAD(root=data, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0)
    engine.fit(model, datamodule=datamodule)
    (checkpoint,) = (root / "runs").rglob("*.ckpt")
    return SimpleNamespace(checkpoint=checkpoint, model=model, engine=engine, data=data)


@pytest.fixture(scope="session")
def bottle_run(mvtec_root, tmp_path_factory):
    """One tiny Dinomaly trained by anomalib's Engine on the shared bottle images for the model's own 6 steps (the
    trainer is given no length; 20 images in batches of 4: one epoch and one more step), then tested once, so its
    ``report.html`` exists. ``engine``, ``model``, ``datamodule``, ``root`` (the default root), ``results`` (the run's
    folder), ``report`` (its TestReport callback). Tests may test, predict and validate with it; none trains it."""
    from types import SimpleNamespace

    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_dinomaly import Dinomaly
    from anomalib_dinomaly.report import TestReport

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bottle_run")
    model = Dinomaly(**TINY_MODEL, warmup_steps=2, default_max_steps=6)
    datamodule = MVTecAD(root=mvtec_root, category="bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=root, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)
    report = next(callback for callback in engine.trainer.callbacks if isinstance(callback, TestReport))
    return SimpleNamespace(engine=engine, model=model, datamodule=datamodule, root=root,
                           results=Path(engine.trainer.default_root_dir), report=report)  # fmt: skip
