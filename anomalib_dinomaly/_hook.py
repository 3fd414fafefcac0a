"""Interpreter-start hook that makes ``Dinomaly`` in anomalib resolve to this package's model.

Imported by ``anomalib_dinomaly_hook.pth`` at interpreter start. It only appends a meta-path
finder (microseconds, no torch import). When ``anomalib.models`` is imported later, the finder
lets the normal loader run and then calls :func:`anomalib_dinomaly.registry.register`; when anomalib's CLI
module is imported, :func:`anomalib_dinomaly.cli_seed.patch_cli` makes it apply ``--seed_everything`` to this
plugin's runs. Set ``ANOMALIB_DINOMALY_OVERRIDE=0`` to turn the name override off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

_TARGET = "anomalib.models"
_CLI_TARGET = "anomalib.cli.cli"
ENV_SWITCH = "ANOMALIB_DINOMALY_OVERRIDE"


def override_enabled() -> bool:
    """Whether ``Dinomaly`` should resolve to this plugin (``ANOMALIB_DINOMALY_OVERRIDE`` not 0/false/no/off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "no", "off"}


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps the real loader of ``anomalib.models`` (registers the plugin once it has run) or of ``anomalib.cli.cli``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):  # noqa: ANN001, ANN201
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        self._loader.exec_module(module)
        if module.__name__ == _CLI_TARGET:
            from anomalib_dinomaly.cli_seed import patch_cli

            patch_cli(module.AnomalibCLI)
            return
        # A plugin module still being imported registers itself when it finishes.
        if "anomalib_dinomaly.lightning_model" not in sys.modules:
            from anomalib_dinomaly.registry import register

            register()


class _AnomalibModelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``anomalib.models`` and ``anomalib.cli.cli`` with the regular path finder and wraps their loaders."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if not (fullname == _CLI_TARGET or (fullname == _TARGET and override_enabled())):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install() -> None:
    """Append the finder once (idempotent)."""
    if not any(isinstance(finder, _AnomalibModelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AnomalibModelsFinder())


install()
