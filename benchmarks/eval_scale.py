"""Validation and test at data-set scale without a model: peak memory and milliseconds per image.

Synthetic anomaly maps and masks (half of the images anomalous, each with one rectangular defect) go
through the real callbacks of a Dinomaly run, as Lightning calls them: the post-processor's
``on_validation_batch_end`` / ``on_validation_epoch_end`` (thresholds and min-max statistics), then for
the test the post-processor's ``on_test_batch_end`` (normalisation and labels) and the evaluator's
``on_test_batch_end`` / ``on_test_epoch_end`` (the per-category table and anomalib's thresholded F1
scores). The validation set is the test set, as with ``MultiClass``'s default. The images are split into
``--categories`` contiguous categories (Real-IAD has 30). Every run is a fresh process, so its peak RSS
is its own; the figures include the ~0.5 GB of an imported torch + anomalib.

``--post-processor anomalib`` uses anomalib's own ``PostProcessor`` (everything else unchanged). It keeps
every validation pixel, so it only runs for sizes whose predicted peak (from the smallest run) stays
below ``--limit-gb``.

Usage: ``python benchmarks/eval_scale.py --images 1000 10000 100000`` (the 100k run: about 15 minutes and
4 GB on 2 cores with 256 x 256 maps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch


def synthetic_batch(first: int, size: int, images: int, categories: int, map_size: int) -> SimpleNamespace:
    """Images ``first .. first + size - 1``: maps, masks, labels, scores and categories (the same on every call)."""
    from anomalib_dinomaly.data import CategoryImageBatch  # noqa: PLC0415

    generator = torch.Generator().manual_seed(first)
    labels = torch.arange(first, first + size) % 2
    maps = torch.rand(size, 1, map_size, map_size, generator=generator) * 0.6
    masks = torch.zeros(size, 1, map_size, map_size)
    corners = torch.randint(0, map_size * 3 // 4, (size, 2), generator=generator)
    extents = torch.randint(map_size // 32, map_size // 5, (size, 2), generator=generator)
    for index in torch.nonzero(labels).flatten().tolist():
        (y, x), (h, w) = corners[index].tolist(), extents[index].tolist()
        masks[index, 0, y : y + h, x : x + w] = 1
    maps += masks * torch.rand(size, 1, 1, 1, generator=generator) * 0.5
    per_category = -(-images // categories)
    return CategoryImageBatch(
        image=torch.zeros(size, 3, 8, 8),
        gt_label=labels,
        gt_mask=masks[:, 0] > 0,
        pred_score=maps.flatten(1).amax(1),
        anomaly_map=maps,
        category=[f"category_{(first + i) // per_category:02d}" for i in range(size)],
    )


class _Module:
    """Stands in for the LightningModule: receives what the evaluator logs."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float) -> None:
        self.logged[name] = float(value)


def run(images: int, categories: int, map_size: int, batch_size: int, post_processor_name: str, out: str) -> dict:
    """Validate and test ``images`` synthetic images once; the figures of this process."""
    from anomalib.metrics import F1Score  # noqa: PLC0415
    from anomalib.post_processing import PostProcessor  # noqa: PLC0415

    from anomalib_dinomaly.metrics import CategoryEvaluator  # noqa: PLC0415
    from anomalib_dinomaly.post_processor import DinomalyPostProcessor  # noqa: PLC0415

    post_processor = PostProcessor() if post_processor_name == "anomalib" else DinomalyPostProcessor()
    evaluator = CategoryEvaluator(
        test_metrics=[
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        ],
    )
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, default_root_dir=out, datamodule=None, barebones=False)
    module = _Module()
    evaluator.log = lambda name, metric: module.log(name, metric.compute())  # Lightning binds the module's log
    starts = range(0, images, batch_size)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    timings = {"validation": 0.0, "test": 0.0}
    for start in starts:
        batch = synthetic_batch(start, min(batch_size, images - start), images, categories, map_size)
        begin = time.perf_counter()
        post_processor.on_validation_batch_end(trainer, module, batch)
        timings["validation"] += time.perf_counter() - begin
    begin = time.perf_counter()
    post_processor.on_validation_epoch_end(trainer, module)
    timings["validation"] += time.perf_counter() - begin
    validation_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    evaluator.on_test_start(trainer, module)
    evaluator.on_test_epoch_start(trainer, module)
    for index, start in enumerate(starts):
        batch = synthetic_batch(start, min(batch_size, images - start), images, categories, map_size)
        begin = time.perf_counter()
        post_processor.on_test_batch_end(trainer, module, batch)
        evaluator.on_test_batch_end(trainer, module, batch, batch, index)
        timings["test"] += time.perf_counter() - begin
    begin = time.perf_counter()
    evaluator.on_test_epoch_end(trainer, module)
    timings["test"] += time.perf_counter() - begin
    return {
        "images": images,
        "post_processor": post_processor_name,
        "import_rss_mb": baseline,
        "validation_peak_rss_mb": validation_peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "validation_ms_per_image": 1000 * timings["validation"] / images,
        "test_ms_per_image": 1000 * timings["test"] / images,
        "pixel_threshold": float(post_processor.pixel_threshold),
        "pixel_AUPRO": module.logged.get("pixel_AUPRO", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--categories", type=int, default=30)
    parser.add_argument("--map-size", type=int, default=256, help="side of the synthetic maps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--post-processor", nargs="+", choices=["ours", "anomalib"], default=["ours", "anomalib"])
    parser.add_argument("--limit-gb", type=float, default=16.0, help="skip anomalib's runs predicted above this")
    parser.add_argument("--out", default="results/eval_scale", help="where the evaluator writes its tables")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (images,), (name,) = args.images, args.post_processor
        print(json.dumps(run(images, args.categories, args.map_size, args.batch_size, name, args.out)))
        return

    print("| post-processor | images | peak RSS after validation (MB) | peak RSS (MB) | validation ms/image | test ms/image |")
    print("|---|---|---|---|---|---|")
    for name in args.post_processor:
        measured: list[dict] = []
        for images in sorted(args.images):
            if name == "anomalib" and measured:  # its validation memory grows linearly: predict before running
                first = measured[0]
                slope = (first["validation_peak_rss_mb"] - first["import_rss_mb"]) / first["images"]
                predicted_gb = (first["import_rss_mb"] + slope * images) / 1024
                if predicted_gb > args.limit_gb:
                    print(f"| {name} | {images} | skipped: about {predicted_gb:.0f} GB predicted | | | |", flush=True)
                    continue
            command = [sys.executable, __file__, "--child", "--images", str(images), "--post-processor", name]
            command += ["--categories", str(args.categories), "--map-size", str(args.map_size)]
            command += ["--batch-size", str(args.batch_size), "--out", args.out]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            result = json.loads(output.strip().splitlines()[-1])
            measured.append(result)
            print(
                f"| {name} | {images} | {result['validation_peak_rss_mb']:.0f} | {result['peak_rss_mb']:.0f} "
                f"| {result['validation_ms_per_image']:.2f} | {result['test_ms_per_image']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
