"""`--seed_everything` of anomalib's CLI takes effect for this plugin's runs: same seed, same weights."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from tests.small_data import make_small_bottle

from tests.test_cli import ANOMALIB, TINY_ARGS


def _train(data: Path, cwd: Path, *extra: str) -> tuple[dict[str, torch.Tensor], dict]:
    args = [ANOMALIB, "train", "--model", "Dinomaly", *TINY_ARGS, "--data", "MVTecAD", "--data.root", str(data),
            "--data.category", "bottle", "--data.train_batch_size", "4", "--data.eval_batch_size", "5",
            "--data.num_workers", "0", "--trainer.max_steps", "2", "--default_root_dir", "results", *extra]  # fmt: skip
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (checkpoint,) = (cwd / "results").rglob("model.ckpt")
    (config,) = (cwd / "results").rglob("config.yaml")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    # every weight the run draws: the random encoder, bottleneck and decoder (not the post-processor statistics)
    weights = {name: value for name, value in state.items() if name.startswith("model.")}
    return weights, yaml.safe_load(config.read_text())


@pytest.mark.slow
def test_seed_everything_gives_the_same_weights(mvtec_root, tmp_path):
    data = make_small_bottle(mvtec_root, tmp_path / "data")
    runs = [tmp_path / name for name in ("first", "second", "unseeded")]
    for run in runs:
        run.mkdir()
    first, first_config = _train(data, runs[0], "--seed_everything", "3")
    second, _ = _train(data, runs[1], "--seed_everything", "3")
    unseeded, unseeded_config = _train(data, runs[2])
    assert first_config["seed_everything"] == 3
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    # the default (true) draws a seed and records it in the saved config, so that run can be repeated too
    assert isinstance(unseeded_config["seed_everything"], int) and unseeded_config["seed_everything"] is not True
    assert not all(torch.equal(first[name], unseeded[name]) for name in first)
