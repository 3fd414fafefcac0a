"""The shipped configs train this plugin's model whatever ANOMALIB_DINOMALY_OVERRIDE says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
#: The model each config trains, by file name: ``dinomaly2_*`` Dinomaly2, the others Dinomaly.
PLUGIN_CLASSES = {
    "Dinomaly": "anomalib_dinomaly.lightning_model.Dinomaly",
    "Dinomaly2": "anomalib_dinomaly.dinomaly2.Dinomaly2",
}


def _model_name(path: Path) -> str:
    return "Dinomaly2" if path.name.startswith("dinomaly2") else "Dinomaly"


def resolved_model_classes(paths: list[Path]) -> dict[str, str]:
    """Each config's model class (``module.qualname``) as anomalib's CLI and ``anomalib_dinomaly.separated`` resolve
    it (jsonargparse subclass arguments of ``AnomalibModule``), without building the model."""
    import importlib

    from anomalib.models import AnomalibModule
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(AnomalibModule, "model", required=True, fail_untyped=False)
    classes = {}
    for path in paths:
        model = yaml.safe_load(Path(path).read_text())["model"]
        module, _, name = parser.parse_object({"model": model}).model.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        classes[str(path)] = f"{cls.__module__}.{cls.__qualname__}"
    return classes


def test_every_config_names_the_plugin_class():
    assert CONFIGS
    for path in CONFIGS:
        model = yaml.safe_load(path.read_text())["model"]
        expected = f"anomalib_dinomaly.{_model_name(path)}"
        assert model["class_path"] == expected, f"{path.name}: name the plugin class explicitly"


def test_override_switch_never_changes_the_model_a_config_trains():
    assert os.environ.get("ANOMALIB_DINOMALY_OVERRIDE", "1") != "0", "run the suite with the override on"
    with_override = resolved_model_classes(CONFIGS)
    # the same interpreter also reports what `from anomalib.models import Dinomaly` gives with the switch off
    code = (
        "import sys; from tests.test_configs import resolved_model_classes; "
        "print(*(f'{path} {cls}' for path, cls in resolved_model_classes(sys.argv[1:]).items()), sep='\\n'); "
        "from anomalib.models import get_model, Dinomaly; print('anomalib.models.Dinomaly', Dinomaly.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, *map(str, CONFIGS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANOMALIB_DINOMALY_OVERRIDE": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    without_override = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    # switched off, anomalib's own name is anomalib's built-in model (the CLI side: tests/test_cli.py)
    assert without_override.pop("anomalib.models.Dinomaly") == "anomalib.models.image.dinomaly.lightning_model"
    assert set(with_override) == set(without_override) == {str(path) for path in CONFIGS}
    for path in CONFIGS:
        plugin = PLUGIN_CLASSES[_model_name(path)]
        assert with_override[str(path)] == without_override[str(path)] == plugin, path.name
