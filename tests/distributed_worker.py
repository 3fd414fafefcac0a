"""Train and test a tiny Dinomaly through anomalib's Engine on 1 or N CPU processes (Lightning DDP, gloo).

Run by ``tests/test_distributed.py``; Lightning's DDP launcher starts this script again for ranks 1..N-1.
Each rank writes ``rank<r>.json`` (metrics, post-processor statistics, samples it saw) and
``rank<r>.safetensors`` (trainable weights) to ``--out``.

Dropout and hard mining are off, and every training step sees the whole training set, so one process
with batch 8 and two processes with batch 4 each compute the same gradients (up to float rounding):
any difference in the results then comes from how the run is distributed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from safetensors.torch import save_file

from anomalib_dinomaly import Dinomaly
from tests.conftest import TINY_MODEL

TRAIN_IMAGES = 8
STEPS = 3


class SampleCounter(Callback):
    """Counts the images each rank validates and tests."""

    def __init__(self) -> None:
        self.val_samples = 0
        self.test_samples = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001, D102
        self.val_samples += len(batch.image)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001, D102
        self.test_samples += len(batch.image)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()

    seed_everything(0, workers=True)
    datamodule = MVTecAD(
        root=args.data,
        category="bottle",
        train_batch_size=TRAIN_IMAGES // args.devices,
        eval_batch_size=3,
        num_workers=0,
        val_split_mode="same_as_test",
    )
    model = Dinomaly(
        **TINY_MODEL,
        bottleneck_dropout=0.0,
        hard_mining_percent=0.0,
        warmup_steps=2,
        visualizer=False,
    )
    counter = SampleCounter()
    engine = Engine(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=STEPS,
        default_root_dir=args.out / "runs",
        callbacks=[counter],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model, datamodule=datamodule)
    metrics = engine.test(model, datamodule=datamodule)[0]

    trainer = engine.trainer
    post_processor = model.post_processor
    report = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "metrics": {name: float(value) for name, value in metrics.items()},
        "post_processor": {
            name: float(getattr(post_processor, name))
            for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
        },
        "val_samples": counter.val_samples,
        "test_samples": counter.test_samples,
    }
    rank = trainer.global_rank
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    trainable = {**model.model.bottleneck.state_dict(prefix="bottleneck."), **model.model.decoder.state_dict(prefix="decoder.")}
    save_file({name: tensor.contiguous() for name, tensor in trainable.items()}, str(args.out / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
