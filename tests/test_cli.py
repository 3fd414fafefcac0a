"""anomalib's own CLI and model lookup resolve `Dinomaly` to this plugin; train/test/export through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
TINY_ARGS = [
    "--model.pretrained", "false", "--model.embed_dim", "48", "--model.depth", "10", "--model.num_heads", "3",
    "--model.image_size", "112", "--model.crop_size", "98",
]  # fmt: skip


def run(args, cwd, env=None, timeout=300, stdout_only=False):
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout if stdout_only else result.stdout + result.stderr


def test_hook_is_cheap_at_interpreter_start():
    """The .pth hook imports nothing heavy at interpreter start (its cost is measured in no test: machines vary)."""
    code = (
        "import sys; import anomalib_dinomaly._hook; "
        "print(*sorted(m for m in ('torch', 'anomalib', 'lightning', 'timm', 'numpy') if m in sys.modules))"
    )
    assert run([sys.executable, "-c", code], cwd=REPO).split() == []


@pytest.mark.slow  # a fresh interpreter importing anomalib
def test_plugin_registers_whichever_module_first_imports_anomalib_models():
    """Importing anomalib.models registers the plugin by importing its Lightning module: no circular import.

    anomaly_map imports anomalib only when it builds the blur (an import at its top would fail here at once);
    optim then imports anomalib.models while it is still loading.
    """
    code = (
        "import anomalib_dinomaly.anomaly_map as maps; import anomalib_dinomaly.optim; maps.AnomalyMapGenerator(); "
        "from anomalib.models import Dinomaly; print(Dinomaly.__module__)"
    )
    # stdout only: libraries may log to stderr (a clean clone without OMP_NUM_THREADS ended with such a line)
    out = run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, stdout_only=True)
    assert out.split()[-1] == "anomalib_dinomaly.lightning_model"


def test_get_model_returns_plugin():
    from anomalib.models import get_model

    from anomalib_dinomaly import Dinomaly

    assert type(get_model("Dinomaly", pretrained=False, embed_dim=24, depth=10, num_heads=2)) is Dinomaly
    assert type(get_model({"class_path": "Dinomaly", "init_args": {"pretrained": False, "embed_dim": 24,
                                                                   "depth": 10, "num_heads": 2}})) is Dinomaly


@pytest.mark.slow
def test_print_config_shows_plugin_and_switch_restores_builtin(tmp_path):
    out = run([ANOMALIB, "train", "--model", "Dinomaly", "--data", "MVTecAD", "--print_config"], cwd=tmp_path)
    assert "class_path: anomalib_dinomaly.Dinomaly" in out
    out = run(
        [ANOMALIB, "train", "--model", "Dinomaly", "--data", "MVTecAD", "--print_config"],
        cwd=tmp_path,
        env={"ANOMALIB_DINOMALY_OVERRIDE": "0"},
    )
    assert "class_path: anomalib.models.Dinomaly" in out and "anomalib_dinomaly" not in out
    # `from anomalib.models import Dinomaly` with the switch off: tests/test_configs.py (its override-off interpreter)


@pytest.mark.slow
def test_config_file_trains_then_cli_export_on_mvtec_bottle(tmp_path, mvtec_root):
    """configs/dinomaly.yaml trains (command-line overrides win); `--model Dinomaly` with its arguments exports it.

    (`anomalib train --model Dinomaly` by name: test_cli_train_on_greyscale_folder and tests/test_cli_seed.py;
    `anomalib test` and `predict` on a trained checkpoint: tests/test_checkpoint_only.py.)
    """
    data = ["--data.root", str(mvtec_root), "--data.category", "bottle",
            "--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]  # fmt: skip
    out = run([ANOMALIB, "train", "--config", str(REPO / "configs" / "dinomaly.yaml"), *TINY_ARGS, *data,
               "--trainer.max_steps", "3", "--trainer.accelerator", "cpu", "--default_root_dir", "results"],
              cwd=tmp_path)  # fmt: skip
    assert "max_steps=3" in out and "image_AUROC" in out
    run_dir = tmp_path / "results" / "DinomalyPlugin" / "MVTecAD" / "bottle" / "v0"
    checkpoint = run_dir / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file() and (run_dir / "images").is_dir()
    assert (run_dir / "report.html").is_file() and (run_dir / "per_category_metrics.md").is_file()

    run([ANOMALIB, "export", "--model", "Dinomaly", *TINY_ARGS, "--export_type", "openvino",
         "--ckpt_path", str(checkpoint), "--export_root", "exported"], cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "exported" / "weights" / "openvino" / "model.xml").is_file()


@pytest.mark.slow
def test_cli_train_on_greyscale_folder(tmp_path, magnetic_tile_root):
    """The greyscale, non-square magnetic-tile images (some smaller than the crop) through anomalib's Folder."""
    defects = ["blowhole", "break", "crack"]
    data = [
        "--data", "Folder", "--data.name", "magnetic_tile", "--data.root", str(magnetic_tile_root),
        "--data.normal_dir", "train/good", "--data.normal_test_dir", "test/good",
        "--data.abnormal_dir", "[" + ", ".join(f"test/{d}" for d in defects) + "]",
        "--data.mask_dir", "[" + ", ".join(f"ground_truth/{d}" for d in defects) + "]",
        "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
    ]  # fmt: skip
    out = run([ANOMALIB, "train", "--model", "Dinomaly", *TINY_ARGS, *data, "--trainer.max_steps", "3",
               "--default_root_dir", "results"], cwd=tmp_path)  # fmt: skip
    assert "max_steps=3" in out and "pixel_AUROC" in out
    assert list((tmp_path / "results" / "DinomalyPlugin").rglob("model.ckpt"))
