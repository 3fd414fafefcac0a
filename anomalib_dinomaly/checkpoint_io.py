"""Checkpoint files that survive a kill in the middle of a save, and a clear error for files that are not whole.

Lightning writes a checkpoint into a temporary file made by ``tempfile`` (so in ``$TMPDIR``) and moves it
over the target. When ``$TMPDIR`` is on another file system than the checkpoint folder (a tmpfs ``/tmp`` is
common on Linux), the move is a copy into the target, which it first truncates: a kill during that copy
leaves a 0-byte or cut-off ``model.ckpt`` and the only good copy orphaned in the temporary folder.

:class:`AtomicCheckpointIO` writes the temporary file beside the target, in the same folder, flushes it to
disk (``fsync``) and renames it over the target (``os.replace``, atomic within one file system), so the
target is always either the previous complete checkpoint or the new complete one. :class:`AtomicCheckpoints`
(a callback that :class:`~anomalib_dinomaly.Dinomaly` adds to every run) installs it on the trainer, so
``Engine`` and ``anomalib`` CLI runs use it without any setting.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import fsspec.utils
import torch
from anomalib.engine.plugins import AnomalibCheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_dinomaly.atomic_files import atomic_write_bytes

logger = logging.getLogger(__name__)

_PICKLE_PROTOCOL_MARK = 0x80  # first byte of torch's legacy (non-zip) format


def _is_local(path: str | Path) -> bool:
    return fsspec.utils.get_protocol(str(path)) == "file"


class CheckpointFileError(RuntimeError):
    """A checkpoint file that is empty, cut short or not a PyTorch checkpoint; the message names it."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:  # noqa: ANN401
    """``torch.save(obj, path)`` through :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getbuffer(), path)


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a local checkpoint file that is empty or not a complete PyTorch file, naming it.

    Only the end of the file is read (the zip central directory that ``torch.save`` writes last), so this is
    cheap. Remote paths (``s3://`` ...) and torch's legacy non-zip format are left to ``torch.load``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFileError: the file is empty, cut short, or another kind of file.
    """
    if not isinstance(path, str | Path) or not _is_local(path):
        return
    path = Path(path)
    if not path.is_file():
        msg = f"Checkpoint file {path} does not exist."
        raise FileNotFoundError(msg)
    size = path.stat().st_size
    if size == 0:
        msg = (
            f"Checkpoint {path} is empty (0 bytes): the process writing it was stopped in the middle of the save "
            "(an older version or another tool wrote it in place). Use an earlier checkpoint of the run, or "
            "retrain; look for an orphaned complete copy (tmp*) in the temporary folder it was written from."
        )
        raise CheckpointFileError(msg)
    if zipfile.is_zipfile(path):
        return
    with path.open("rb") as file:
        first = file.read(1)
    if first and first[0] == _PICKLE_PROTOCOL_MARK:
        return
    msg = (
        f"Checkpoint {path} ({size} bytes) is not a complete PyTorch checkpoint: its end (the zip directory "
        "torch.save writes last) is missing. It was cut short (a save or copy stopped midway, a full disk, a "
        "partial download) or is another kind of file. Use another copy or an earlier checkpoint, or retrain."
    )
    raise CheckpointFileError(msg)


class AtomicCheckpointIO(AnomalibCheckpointIO):
    """anomalib's checkpoint IO (safe loading with its allow-list) with atomic local saves and checked loads.

    Args:
        extra_safe_globals: model-specific types allowed under ``weights_only=True``, as in anomalib.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:  # noqa: ANN401
        """Write atomically beside the target (local paths); remote paths go through Lightning's own writer."""
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool = True) -> dict[str, Any]:  # noqa: ANN401
        """anomalib's safe load, after :func:`check_checkpoint_file`."""
        check_checkpoint_file(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def use_atomic_checkpoints(trainer: Trainer) -> bool:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` unless the user configured a checkpoint IO of their own.

    Lightning's and anomalib's default IOs are replaced (anomalib's allow-list is kept); any other IO (a
    user's class, ``AsyncCheckpointIO``, a strategy's own) is left alone.

    Returns:
        Whether the trainer now saves atomically.
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if isinstance(current, AtomicCheckpointIO):
        return True
    if type(current) not in {TorchCheckpointIO, AnomalibCheckpointIO}:
        logger.debug("Keeping the user's checkpoint IO %s (not replaced by an atomic one).", type(current).__name__)
        return False
    strategy.checkpoint_io = AtomicCheckpointIO(extra_safe_globals=getattr(current, "extra_safe_globals", ()))
    return True


class AtomicCheckpoints(Callback):
    """Installs :class:`AtomicCheckpointIO` at the start of every run, before any checkpoint is read or written."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # noqa: D102
        del pl_module, stage
        use_atomic_checkpoints(trainer)
