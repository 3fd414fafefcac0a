"""``--seed_everything`` (and ``seed_everything:`` in a config file) applied to this plugin's ``anomalib`` runs.

anomalib's CLI declares the option, with Lightning's meaning, but never applies it. For runs of this
package's models it is applied here as Lightning's own CLI does, before any class is built: an integer
seeds Python, NumPy, torch and the data-loader workers; ``true`` (the default) draws a seed and writes it
into the run's configuration (the saved ``config.yaml``), so any run can be repeated; ``false`` seeds
nothing. Runs of other models are left as anomalib makes them.
"""

from __future__ import annotations

import functools
from typing import Any

PLUGIN_PREFIX = "anomalib_dinomaly."


def _is_plugin_model(model: Any) -> bool:  # noqa: ANN401
    class_path = model.get("class_path") if hasattr(model, "get") else None
    return isinstance(class_path, str) and class_path.startswith(PLUGIN_PREFIX)


def apply_seed(config: Any) -> None:  # noqa: ANN401
    """Seed from a subcommand's configuration (a jsonargparse ``Namespace``) and record the seed used."""
    from lightning.pytorch import seed_everything

    seed = config.get("seed_everything") if hasattr(config, "get") else None
    if seed is None or seed is False or not _is_plugin_model(config.get("model")):
        return
    config["seed_everything"] = seed_everything(None if seed is True else int(seed), workers=True)


def patch_cli(cli_class: type) -> None:
    """Make ``cli_class`` (anomalib's ``AnomalibCLI``) apply the seed before it builds the model and data."""
    original = cli_class.before_instantiate_classes
    if getattr(original, "_applies_seed", False):
        return

    @functools.wraps(original)
    def before_instantiate_classes(self) -> None:  # noqa: ANN001
        original(self)
        subcommand = self.config.get("subcommand")
        if subcommand:
            apply_seed(self.config.get(subcommand))

    before_instantiate_classes._applies_seed = True  # noqa: SLF001
    cli_class.before_instantiate_classes = before_instantiate_classes
