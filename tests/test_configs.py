"""The shipped configs train this plugin's model whatever ANOMALIB_DINOMALY_OVERRIDE says."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# Resolves each config's model class the way anomalib's CLI and anomalib_dinomaly.separated parse it
# (jsonargparse subclass arguments of AnomalibModule), without building the model.
RESOLVE = """
import importlib, sys
import yaml
from jsonargparse import ArgumentParser
from anomalib.models import AnomalibModule

parser = ArgumentParser()
parser.add_subclass_arguments(AnomalibModule, "model", required=True, fail_untyped=False)
for path in sys.argv[1:]:
    with open(path) as file:
        model = yaml.safe_load(file)["model"]
    class_path = parser.parse_object({"model": model}).model.class_path
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    print(path, f"{cls.__module__}.{cls.__qualname__}")
"""


def _resolved_classes(override: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", RESOLVE, *map(str, CONFIGS)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANOMALIB_DINOMALY_OVERRIDE": override},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split() for line in result.stdout.splitlines() if line.strip())


#: The model each config trains, by file name: ``dinomaly2_*`` Dinomaly2, the others Dinomaly.
PLUGIN_CLASSES = {
    "Dinomaly": "anomalib_dinomaly.lightning_model.Dinomaly",
    "Dinomaly2": "anomalib_dinomaly.dinomaly2.Dinomaly2",
}


def _model_name(path) -> str:  # noqa: ANN001
    return "Dinomaly2" if path.name.startswith("dinomaly2") else "Dinomaly"


def test_every_config_names_the_plugin_class():
    assert CONFIGS
    for path in CONFIGS:
        model = yaml.safe_load(path.read_text())["model"]
        expected = f"anomalib_dinomaly.{_model_name(path)}"
        assert model["class_path"] == expected, f"{path.name}: name the plugin class explicitly"


def test_override_switch_never_changes_the_model_a_config_trains():
    with_override, without_override = _resolved_classes("1"), _resolved_classes("0")
    assert set(with_override) == set(without_override) == {str(path) for path in CONFIGS}
    for path in CONFIGS:
        plugin = PLUGIN_CLASSES[_model_name(path)]
        assert with_override[str(path)] == without_override[str(path)] == plugin, path.name
