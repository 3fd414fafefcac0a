"""Check that a labelling callback runs before the model's post-processor, whose labels would otherwise win."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["check_runs_before_post_processor"]


def check_runs_before_post_processor(callback: Callback, trainer: Trainer, pl_module: LightningModule) -> None:
    """Raise when ``callback`` comes after the model's post-processor in the trainer's callbacks.

    Raises:
        RuntimeError: naming the fix (add the callback to the trainer, not to the model).
    """
    callbacks = trainer.callbacks
    post_processor = getattr(pl_module, "post_processor", None)
    if post_processor in callbacks and callbacks.index(callback) > callbacks.index(post_processor):
        msg = (
            f"{type(callback).__name__} runs after the model's post-processor, whose labels would win: add it to "
            "the trainer's callbacks (Engine(callbacks=[...]) or --trainer.callbacks), not to the model."
        )
        raise RuntimeError(msg)
