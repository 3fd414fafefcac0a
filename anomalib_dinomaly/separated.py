"""Class-separated training: one model per category, reported in the same per-category table.

The paper also reports Dinomaly trained one model per category (5,000 steps each). This runs that
protocol over the categories of a :class:`~anomalib_dinomaly.data.MultiClass` datamodule with
anomalib's ``Engine``: each category gets a fresh copy of the model, its own results folder, and its
row in one merged table (``<root>/<model>/<dataset>/separated/per_category_metrics.{md,csv}``).

One line, with the same kind of config as a unified run::

    python -m anomalib_dinomaly.separated --config configs/dinomaly_mvtec_separated.yaml \
        --data.init_args.root ./datasets/MVTecAD

Few-shot: ``--data.init_args.shots 8`` (or a config with ``shots``) trains each category's model on the same
8 images a unified run with that seed uses (:class:`~anomalib_dinomaly.data.FewShot`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.engine import Engine
from anomalib.models import AnomalibModule

from anomalib_dinomaly.data import MultiClass
from anomalib_dinomaly.metrics import CategoryEvaluator, CategoryTable

__all__ = ["SEPARATED", "main", "train_separated"]

logger = logging.getLogger(__name__)

#: Results sub-folder of the merged table.
SEPARATED = "separated"


def train_separated(
    model: AnomalibModule,
    datamodule: MultiClass,
    default_root_dir: str | Path = "results",
    **trainer_kwargs: Any,  # noqa: ANN401
) -> CategoryTable:
    """Train and test one copy of ``model`` per category of ``datamodule``; return the merged table.

    Args:
        model: an untrained model whose evaluator is a :class:`CategoryEvaluator` (Dinomaly's default).
        datamodule: the categories; its batch sizes and worker count apply to every category.
        default_root_dir: results root, as in anomalib's ``Engine``.
        **trainer_kwargs: Lightning ``Trainer`` arguments (e.g. ``max_steps=5000``), as in ``Engine``.

    Raises:
        TypeError: the model's evaluator is not a :class:`CategoryEvaluator`.
    """
    if not isinstance(model.evaluator, CategoryEvaluator):
        msg = f"train_separated needs a CategoryEvaluator on the model, got {type(model.evaluator).__name__}."
        raise TypeError(msg)
    tables = []
    for category, category_data in datamodule.datamodules.items():
        category_data.train_batch_size = datamodule.train_batch_size
        category_data.eval_batch_size = datamodule.eval_batch_size
        category_data.num_workers = datamodule.num_workers
        category_model = copy.deepcopy(model)
        engine = Engine(default_root_dir=default_root_dir, **trainer_kwargs)
        logger.info("Class-separated training: %s", category)
        engine.fit(category_model, datamodule=category_data)
        engine.test(category_model, datamodule=category_data)
        (row,) = category_model.evaluator.table.rows.values()
        tables.append(CategoryTable({category: row}))
    table = CategoryTable.merge(tables)
    markdown, csv = table.write(Path(default_root_dir) / model.name / datamodule.name / SEPARATED)
    logger.info("Class-separated results (%s, %s):\n%s", markdown, csv, table.to_markdown())
    return table


def main(argv: Sequence[str] | None = None) -> CategoryTable:
    """``python -m anomalib_dinomaly.separated --config <anomalib-style config with model, data, trainer>``."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import Trainer

    import anomalib_dinomaly.lightning_model  # noqa: F401  (makes the bare name Dinomaly resolve to this plugin)

    parser = ArgumentParser(description="Train one model per category and write one per-category table.")
    parser.add_argument("--config", action=ActionConfigFile, help="anomalib-style YAML (model, data, trainer)")
    parser.add_subclass_arguments(AnomalibModule, "model", required=True)
    parser.add_subclass_arguments(MultiClass, "data", required=True)
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    parser.add_argument("--default_root_dir", type=str, default="results")
    config = parser.parse_args(argv)
    defaults = parser.get_defaults().trainer
    trainer_kwargs = {key: value for key, value in config.trainer.items() if value != defaults.get(key)}
    objects = parser.instantiate_classes(config)
    table = train_separated(objects.model, objects.data, config.default_root_dir, **trainer_kwargs)
    print(table.to_markdown())  # noqa: T201
    return table


if __name__ == "__main__":
    main()
