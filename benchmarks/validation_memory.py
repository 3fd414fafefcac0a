"""Peak memory of ``Engine.validate`` against the number of validation images: the slope in MB per image.

A synthetic MVTec-layout category (random images, half of the test images anomalous with a rectangular
mask) is validated by a Dinomaly with a tiny random encoder at the default 448 -> 392, in a fresh process
per size, and the peak RSS of each process is read. The slope between the smallest and largest size is
the memory each further validation image costs; ``--post-processor anomalib`` runs anomalib's own
``PostProcessor`` for comparison.

Usage: ``python benchmarks/validation_memory.py --images 40 200`` (about a minute per 100 images on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

#: A small random encoder with Dinomaly's structure (as the tests' TINY_ENCODER).
TINY_ENCODER = {"pretrained": False, "embed_dim": 48, "depth": 10, "num_heads": 3}


def write_category(root: Path, images: int, side: int = 96) -> Path:
    """An MVTec-layout ``synthetic`` category with 4 training images and ``images`` test images (half anomalous)."""
    rng = np.random.default_rng(0)
    category = root / "synthetic"
    for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (category / folder).mkdir(parents=True, exist_ok=True)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(category / f"train/good/{index:04d}.png")
    for index in range(images):
        picture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        if index % 2:
            Image.fromarray(picture).save(category / f"test/good/{index:04d}.png")
            continue
        mask = np.zeros((side, side), dtype=np.uint8)
        mask[side // 4 : side // 2, side // 3 : side // 2] = 255
        Image.fromarray(picture).save(category / f"test/defect/{index:04d}.png")
        Image.fromarray(mask).save(category / f"ground_truth/defect/{index:04d}_mask.png")
    return root


def validate(root: Path, post_processor: str) -> dict:
    """Run ``Engine.validate`` once in this process; return the samples validated and the peak RSS."""
    import torch  # noqa: PLC0415
    from anomalib.data import MVTecAD  # noqa: PLC0415
    from anomalib.engine import Engine  # noqa: PLC0415
    from anomalib.post_processing import PostProcessor  # noqa: PLC0415

    from anomalib_dinomaly import Dinomaly  # noqa: PLC0415

    torch.manual_seed(0)
    datamodule = MVTecAD(
        root=root, category="synthetic", eval_batch_size=8, num_workers=0, val_split_mode="same_as_test"
    )
    model = Dinomaly(
        **TINY_ENCODER,
        post_processor=PostProcessor() if post_processor == "anomalib" else True,
        visualizer=False,
        check_data=False,
    )
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=root / "results")
    engine.validate(model=model, datamodule=datamodule)
    return {
        "val_images": len(datamodule.val_data),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pixel_threshold": float(model.post_processor._pixel_threshold),  # noqa: SLF001
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[40, 200], help="validation set sizes")
    parser.add_argument("--post-processor", choices=["ours", "anomalib"], default="ours")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(validate(args.child, args.post_processor)))
        return
    results = []
    for images in args.images:
        with tempfile.TemporaryDirectory() as folder:
            root = write_category(Path(folder), images)
            command = [sys.executable, __file__, "--child", str(root), "--post-processor", args.post_processor]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(f"{results[-1]['val_images']:6d} validation images: peak RSS {results[-1]['peak_rss_mb']:8.1f} MB")
    if len(results) > 1:
        first, last = results[0], results[-1]
        slope = (last["peak_rss_mb"] - first["peak_rss_mb"]) / (last["val_images"] - first["val_images"])
        print(f"slope ({args.post_processor} post-processor): {slope:.3f} MB per validation image")


if __name__ == "__main__":
    main()
