"""Published encoder weights fetched when a run first needs them, and never when a checkpoint supplies them.

Building a model must not need the network: ``anomalib test|predict|export --model Dinomaly --ckpt_path X``
builds the default model (``pretrained=True``) before it reads the checkpoint, which holds the encoder
weights anyway. The download therefore waits until a run starts (training, validation, test, predict)
or the model is first called, and is dropped when a checkpoint is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn


class DeferredEncoderWeights:
    """The published weights of an encoder, loaded on demand.

    Args:
        make_encoder: builds the same encoder; called with ``pretrained=True`` it fetches the published weights
            (raising :class:`~anomalib_dinomaly.PretrainedWeightsError` with instructions when it cannot).
    """

    def __init__(self, make_encoder: Callable[..., nn.Module]) -> None:
        self.make_encoder = make_encoder

    def load_into(self, encoder: nn.Module) -> None:
        """Copy the published weights into ``encoder`` (which may have dropped its last blocks).

        The random numbers drawn while building the reference encoder are not taken from the run's streams.
        """
        with torch.random.fork_rng(devices=[]):
            reference = self.make_encoder(pretrained=True)
        missing, _ = encoder.load_state_dict(reference.state_dict(), strict=False)
        if missing:
            msg = f"The published weights lack {missing[:5]} of encoder {type(encoder).__name__}."
            raise RuntimeError(msg)


class LoadDeferredWeights(Callback):
    """Calls ``load_pretrained_encoder()`` of the module when a run starts (a no-op once loaded or restored)."""

    @staticmethod
    def _load(pl_module: LightningModule) -> None:
        load = getattr(pl_module, "load_pretrained_encoder", None)
        if load is not None:
            load()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._load(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._load(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._load(pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._load(pl_module)
