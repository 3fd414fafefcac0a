"""Checkpoint files survive a kill mid-save; unusable checkpoint files and other models' checkpoints are named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from tests.small_data import make_small_bottle

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.checkpoint_io import AtomicCheckpointIO, CheckpointFileError, atomic_torch_save
from tests.conftest import REPO, TINY_MODEL

SMALL = {**TINY_MODEL, "visualizer": False, "warmup_steps": 1}


def _other_file_system_temp_root(reference: Path) -> Path | None:
    """A folder for TMPDIR on another file system than ``reference`` (a tmpfs), where the machine has one."""
    for candidate in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        try:
            if candidate.is_dir() and os.access(candidate, os.W_OK) and candidate.stat().st_dev != reference.stat().st_dev:
                return candidate
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_kill_during_a_save_leaves_the_previous_checkpoint(mvtec_root, tmp_path):
    """SIGKILL at the first moment the second checkpoint reaches the disk: the first one is still there, whole.

    With ``TMPDIR`` on another file system, Lightning's own writer copied into ``model.ckpt`` in place and a
    kill left it empty; the atomic writer only renames a complete file beside it over the target.
    """
    data = make_small_bottle(mvtec_root, tmp_path / "data")
    runs, marker = tmp_path / "runs", tmp_path / "stalled"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    other = _other_file_system_temp_root(tmp_path)
    if other is not None:
        temporary = Path(tempfile.mkdtemp(prefix="dinomaly-tmpdir-", dir=other))
        env["TMPDIR"] = str(temporary)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint_kill_worker", str(data), str(runs), str(marker)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if worker.poll() is not None:
                pytest.fail(f"the worker ended (rc {worker.returncode}) before the second save:\n{worker.stdout.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the worker did not reach the second save in 300 s")
            time.sleep(0.1)
        time.sleep(0.2)  # the marker is written first, then the worker sleeps
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        if other is not None:
            for leftover in temporary.iterdir():
                leftover.unlink()
            temporary.rmdir()
    stalled = marker.read_text()
    (checkpoint,) = runs.rglob("model.ckpt")
    assert checkpoint.stat().st_size > 0, stalled
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2, stalled  # the previous good checkpoint, complete
    assert "AtomicCheckpointIO" in stalled, stalled
    model = Dinomaly.load_from_checkpoint(checkpoint)
    assert model.hparams.embed_dim == TINY_MODEL["embed_dim"]


def test_atomic_save_failing_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    atomic_torch_save({"step": 1, "weights": torch.ones(4)}, path)
    before = path.read_bytes()

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"step": 2, "weights": torch.zeros(4)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


@pytest.fixture(scope="module")
def trained(small_bottle_run) -> tuple[Path, Engine]:
    return small_bottle_run.checkpoint, small_bottle_run.engine


def test_engine_runs_save_atomically(trained):
    _, engine = trained
    assert isinstance(engine.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_checkpoint_is_named(trained, tmp_path, damage):
    checkpoint, _ = trained
    broken = tmp_path / "model.ckpt"
    content = checkpoint.read_bytes()
    broken.write_bytes(b"" if damage == "empty" else content[: len(content) // 2])
    expected = "is empty" if damage == "empty" else "is not a complete PyTorch checkpoint"
    with pytest.raises(CheckpointFileError, match=f"Checkpoint {broken}.* {expected}"):
        Dinomaly.load_from_checkpoint(broken)
    with pytest.raises(CheckpointFileError, match=f"Checkpoint {broken}.* {expected}"):
        Engine(accelerator="cpu", default_root_dir=tmp_path / "runs").test(Dinomaly(**SMALL), dataloaders=[], ckpt_path=broken)
