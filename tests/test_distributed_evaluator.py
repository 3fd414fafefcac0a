"""CategoryEvaluator under DDP (gloo, 2 CPU processes, no model): each category computed once complete, same table."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anomalib_dinomaly.data import CategoryImageBatch
from anomalib_dinomaly.metrics import REPORTED_METRICS, CategoryEvaluator

SIZES = {"bottle": 7, "cable": 4, "tile": 6}  # 17 images: a DistributedSampler pads one "bottle" sample at the end
BATCH = 3


class _Recorder:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float) -> None:
        self.logged[name] = value


def _data() -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    categories = [name for name, size in SIZES.items() for _ in range(size)]
    count = len(categories)
    masks = torch.zeros(count, 16, 16, dtype=torch.bool)
    for index in range(0, count, 2):
        masks[index, 3 + index % 5 : 9, 4:12] = True
    labels = masks.flatten(1).any(1).long()
    maps = torch.rand(count, 1, 16, 16, generator=generator) + 0.4 * masks.unsqueeze(1)
    return categories, torch.rand(count, generator=generator) + 0.3 * labels, labels, maps, masks


def _evaluate(rank: int, world_size: int, out: str) -> dict[str, dict[str, float]]:
    categories, scores, labels, maps, masks = _data()
    count = len(categories)
    total = math.ceil(count / world_size) * world_size
    order = (list(range(count)) + list(range(total - count)))[rank::world_size]  # DistributedSampler, no shuffle
    trainer = SimpleNamespace(world_size=world_size, is_global_zero=rank == 0, default_root_dir=out, datamodule=None)
    module, evaluator = _Recorder(), CategoryEvaluator(eval_size=None)
    evaluator.on_test_start(trainer, module)
    evaluator.on_test_epoch_start(trainer, module)
    for start in range(0, len(order), BATCH):
        index = order[start : start + BATCH]
        batch = CategoryImageBatch(
            image=torch.zeros(len(index), 3, 8, 8),
            gt_label=labels[index],
            gt_mask=masks[index],
            pred_score=scores[index],
            anomaly_map=maps[index],
            category=[categories[i] for i in index],
        )
        evaluator.on_test_batch_end(trainer, module, batch, batch, start // BATCH)
    evaluator.on_test_epoch_end(trainer, module)
    return evaluator.table.rows


def _rank(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        rows = _evaluate(rank, world_size, out)
        Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_give_the_single_process_table(tmp_path):
    single = _evaluate(0, 1, str(tmp_path / "single"))
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1]
    assert list(ranks[0]) == list(SIZES)
    for category, row in single.items():
        assert set(row) == set(REPORTED_METRICS)
        assert ranks[0][category] == pytest.approx(row, abs=1e-12, nan_ok=True), category
