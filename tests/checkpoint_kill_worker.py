"""Trains a tiny Dinomaly through anomalib's Engine and stalls inside its second checkpoint save, for a SIGKILL.

Usage: python -m tests.checkpoint_kill_worker DATA_ROOT RUN_ROOT MARKER

The first checkpoint is written after step 2. During the second save (step 4), a profile hook watches the
checkpoint folder after every function return and, at the first sign of the new checkpoint on disk (the
target truncated or replaced, or a new file with content beside it), writes MARKER and sleeps, so the test
can kill the process at exactly that point of the save.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from anomalib_dinomaly import Dinomaly
from tests.conftest import TINY_MODEL


def _state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_ino, stat.st_mtime_ns


class StallInSecondSave(Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):  # noqa: ANN001, D102
        if trainer.global_step != 4:
            return
        target = Path(trainer.checkpoint_callback.dirpath) / "model.ckpt"
        previous = _state(target)

        def stall(reason: str) -> None:
            sys.setprofile(None)
            self.marker.write_text(f"{reason}; checkpoint IO {type(trainer.strategy.checkpoint_io).__name__}")
            time.sleep(600)

        def watch(frame, event, arg):  # noqa: ANN001, ANN202
            if event not in {"return", "c_return"}:
                return
            if _state(target) != previous:
                stall(f"{target.name} changed on disk")
            for entry in os.scandir(target.parent):
                if entry.name != target.name and entry.stat().st_size > 0:
                    stall(f"new file {entry.name} beside it")

        sys.setprofile(watch)


def main(data: str, runs: str, marker: str) -> None:
    seed_everything(0)
    model = Dinomaly(**TINY_MODEL, visualizer=False, warmup_steps=1)
    engine = Engine(
        accelerator="cpu",
        max_steps=6,
        default_root_dir=runs,
        callbacks=[StallInSecondSave(Path(marker))],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = MVTecAD(root=data, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0, seed=0)
    engine.fit(model, datamodule=datamodule)


if __name__ == "__main__":
    main(*sys.argv[1:])
