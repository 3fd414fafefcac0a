"""Weights trained with the official code deploy through anomalib: plugin checkpoint and OpenVINO model."""

from __future__ import annotations

import csv
import json
import runpy
import sys

import pytest
import torch
from anomalib.data.utils import read_image
from safetensors.torch import load_file

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.official import from_official_checkpoint
from tests.conftest import REPO


@pytest.mark.slow
def test_official_checkpoint_to_plugin_checkpoint_and_openvino(golden_dir, mvtec_root, tmp_path, monkeypatch):
    script = str(REPO / "examples" / "official_to_openvino.py")
    arguments = ["--checkpoint", str(golden_dir / "state_dict.safetensors"), "--config", str(golden_dir / "config.json"),
                 "--data", str(mvtec_root), "--category", "bottle", "--output", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # OpenVINO writes its cache into the working directory
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 0

    with (tmp_path / "out" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((mvtec_root / "bottle" / "test").glob("*/*.png")))
    assert max(abs(float(row["torch"]) - float(row["openvino"])) for row in rows) <= 1e-4

    # The plugin checkpoint reloads (no weights needed) to the official model's raw outputs and fitted thresholds.
    module = Dinomaly.load_from_checkpoint(tmp_path / "out" / "dinomaly.ckpt").eval()
    official = from_official_checkpoint(load_file(str(golden_dir / "state_dict.safetensors")),
                                        json.loads((golden_dir / "config.json").read_text()))  # fmt: skip
    image = module.pre_processor.transform(read_image(sorted((mvtec_root / "bottle" / "test").glob("*/*.png"))[0],
                                                      as_tensor=True).unsqueeze(0))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(module.model(image).pred_score, official(image).pred_score, rtol=0, atol=0)
    assert torch.isfinite(module.post_processor._image_threshold)


def test_architecture_keys_come_from_the_official_config_only(golden_dir):
    config = json.loads((golden_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="decoder_depth"):
        Dinomaly.from_official_checkpoint(golden_dir / "state_dict.safetensors", config, decoder_depth=4)
    with pytest.raises(ValueError, match="pos_grid 16"):
        Dinomaly.from_official_checkpoint(golden_dir / "state_dict.safetensors", {**config, "pos_grid": 16})
