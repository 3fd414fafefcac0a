"""Time that the HTML test report adds to ``engine.test`` on an MVTec-layout category.

One model is trained for a few steps; then ``engine.test`` runs ``--repeats`` times with the report and as
often without it, on the same weights, in ABBA order (a steady drift of the machine's speed hits both
alike). Prints every test time, the medians, and the time spent inside the report's hooks (collecting
during the test, writing at its end): the report's own cost, which unlike the difference of two test
times does not drown in the noise of a busy machine.

    PYTHONPATH=. .venv/bin/python benchmarks/report_overhead.py --data ../shared/data/mvtec_ad --category bottle
    PYTHONPATH=. .venv/bin/python benchmarks/report_overhead.py --tiny   # 48-wide random encoder at 112 -> 98 px
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.report import TestReport

TINY = {"embed_dim": 48, "depth": 10, "num_heads": 3, "image_size": 112, "crop_size": 98}


class DinomalyWithoutReport(Dinomaly):
    """The same model without the report callback."""

    def configure_callbacks(self) -> list:
        return [callback for callback in super().configure_callbacks() if not isinstance(callback, TestReport)]


def timed(hook, total: list[float]):  # noqa: ANN001, ANN201
    """``hook`` adding its run time to ``total[0]``."""

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad"))
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--encoder", default="dinov2reg_vit_small_14")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random encoder at 112 -> 98 px instead of --encoder at 448 -> 392"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("anomalib").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)

    torch.manual_seed(0)
    kwargs = {"pretrained": False, **(TINY if args.tiny else {"encoder_name": args.encoder})}
    with_report = Dinomaly(**kwargs, warmup_steps=2)
    data = MVTecAD(root=args.data, category=args.category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    root = Path(tempfile.mkdtemp(prefix="report_overhead_"))
    engine = Engine(default_root_dir=root, max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False)
    engine.fit(model=with_report, datamodule=data)
    without_report = DinomalyWithoutReport(**kwargs)
    without_report.load_state_dict(with_report.state_dict())

    hook_seconds: list[float] = [0.0]
    for hook in ("on_test_batch_end", "on_test_epoch_end", "on_test_end"):
        setattr(TestReport, hook, timed(getattr(TestReport, hook), hook_seconds))
    times: dict[str, list[float]] = {"with report": [], "without report": []}
    report_seconds, write_seconds = [], []
    pair = [("with report", with_report), ("without report", without_report)]
    for repeat in range(args.repeats):
        for name, model in pair if repeat % 2 == 0 else pair[::-1]:  # ABBA order: a linear drift cancels
            hook_seconds[0] = 0.0
            started = time.perf_counter()
            engine.test(model=model, datamodule=data, verbose=False)
            times[name].append(time.perf_counter() - started)
            report = next((c for c in engine.trainer.callbacks if isinstance(c, TestReport)), None)
            if report is not None:
                report_seconds.append(hook_seconds[0])
                write_seconds.append(report.seconds)
    with_s, without_s = (statistics.median(times[name]) for name in ("with report", "without report"))
    images = len(data.test_data)
    model_name = "tiny random encoder 112 -> 98" if args.tiny else f"{args.encoder} (random weights) 448 -> 392"
    print(f"{args.category}, {images} test images, {model_name}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    for name, values in times.items():
        print(f"engine.test {name}: " + ", ".join(f"{value:.2f}" for value in values) + " s")
    print(f"engine.test median: {with_s:.2f} s with the report, {without_s:.2f} s without "
          f"(difference {100 * (with_s - without_s) / without_s:+.1f} %)")
    own, write = statistics.median(report_seconds), statistics.median(write_seconds)
    print(f"report hooks median: {own:.3f} s, of which writing the page {write:.3f} s; "
          f"overhead {100 * own / without_s:.1f} % of the test time without the report")


if __name__ == "__main__":
    main()
