"""Lightning DDP on CPU (gloo, 2 processes) through anomalib's Engine gives the single-process results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.small_data import make_small_bottle

from tests.conftest import REPO

WORKER = Path(__file__).with_name("distributed_worker.py")


def _run(data: Path, out: Path, devices: int) -> list[dict]:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(WORKER), "--data", str(data), "--out", str(out), "--devices", str(devices)]
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=170, check=False)
    assert process.returncode == 0, f"{devices}-process run failed:\n{process.stdout[-3000:]}\n{process.stderr[-6000:]}"
    reports = []
    for rank in range(devices):
        report = json.loads((out / f"rank{rank}.json").read_text())
        report["weights"] = load_file(str(out / f"rank{rank}.safetensors"))
        reports.append(report)
    return reports


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_processes_match_one(mvtec_root, tmp_path):
    data = make_small_bottle(mvtec_root, tmp_path / "data")  # 8 train, 10 test/val images: 5 per rank, no padding
    single = _run(data, tmp_path / "single", devices=1)[0]
    ranks = _run(data, tmp_path / "ddp", devices=2)

    assert single["world_size"] == 1
    assert [report["world_size"] for report in ranks] == [2, 2]
    assert [report["global_step"] for report in ranks] == [single["global_step"]] * 2
    # The work was split: each rank validated and tested half of the images.
    assert [report["test_samples"] for report in ranks] == [single["test_samples"] // 2] * 2 == [5, 5]
    assert [report["val_samples"] for report in ranks] == [single["val_samples"] // 2] * 2

    first, second = ranks
    # DDP keeps the replicas identical and the statistics are synchronised: both ranks hold the same numbers.
    for name in first["weights"]:
        assert torch.equal(first["weights"][name], second["weights"][name]), name
    assert first["post_processor"] == second["post_processor"]
    assert first["metrics"] == second["metrics"]

    # ...and they are those of one process on the same data (averaged half-batch gradients = full-batch gradient).
    for name, tensor in single["weights"].items():
        torch.testing.assert_close(first["weights"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    for name, value in single["post_processor"].items():
        assert first["post_processor"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # anomalib's thresholded F1 scores and the paper's seven metrics (CategoryEvaluator gathers all ranks' samples)
    assert {"image_F1Score", "pixel_F1Score", "image_AUROC", "pixel_AUPRO", "image_AUROC/bottle"} <= set(first["metrics"])
    assert set(first["metrics"]) == set(single["metrics"])
    for name, value in single["metrics"].items():
        assert first["metrics"][name] == pytest.approx(value, abs=1e-4), name
    # the HTML report gathers both ranks' images: the same counts as one process
    pages = [next((tmp_path / name / "runs").rglob("report.html")).read_text() for name in ("single", "ddp")]
    counts = [re.search(r"\d+ test images: [^<]*", page)[0] for page in pages]
    assert counts[0] == counts[1] and counts[0].startswith("10 test images: 4 good, 6 defective")


@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
def test_threshold_on_synchronised_state_equals_per_batch_state(labels):
    """After a DDP sync, torchmetrics holds one flat tensor instead of a list of batches: same threshold."""
    from anomalib.data import ImageBatch

    from anomalib_dinomaly.post_processor import DistributedF1AdaptiveThreshold

    scores = torch.tensor([0.2, 0.9, 0.1, 0.7, 0.4, 0.3])
    per_batch = DistributedF1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    for part in (slice(0, 3), slice(3, 6)):
        per_batch.update(ImageBatch(image=torch.zeros(3, 3, 4, 4), pred_score=scores[part], gt_label=torch.tensor(labels[part])))
    synchronised = DistributedF1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    synchronised.preds, synchronised.target = torch.cat(per_batch.preds), torch.cat(per_batch.target)
    synchronised._update_count = 1
    expected = {0: scores.max(), 6: scores.min()}.get(sum(labels))  # no anomalous / no normal images
    threshold = per_batch.compute()
    assert synchronised.compute() == threshold
    if expected is not None:
        assert threshold == expected
