"""A module takes its architecture from the checkpoint it loads, or says clearly why it cannot.

``anomalib test|predict --model Dinomaly --ckpt_path X`` first builds the model from the command line (the
defaults when no ``--model.*`` is given) and only then loads ``X`` through Lightning, which calls
``on_load_checkpoint`` before ``load_state_dict``. :func:`adapt_to_checkpoint`, called there, rebuilds the
module's networks from the checkpoint's hyper-parameters when they differ from the ones it was built with,
so the weights fit; a checkpoint of another model, or whose weights do not fit, gets one error saying what it
holds and what was expected, instead of a page of "size mismatch" lines.

It works from ``hparams`` and the class's constructor only, so subclasses (and siblings that call it) get
the same behaviour.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

logger = logging.getLogger(__name__)

#: Checkpoint entry naming the class that saved it (``Dinomaly``, ``Dinomaly2``, ...).
MODEL_CLASS_KEY = "anomalib_dinomaly_model"
#: anomalib components: constructor arguments that are objects, restored by anomalib itself.
COMPONENTS = ("pre_processor", "post_processor", "evaluator", "visualizer")
#: Arguments that only say where the encoder weights come from; the checkpoint holds the weights.
WEIGHT_SOURCES = ("pretrained", "encoder_weights")
_LISTED = 3
_SOURCE: ContextVar[str | None] = ContextVar("checkpoint_source", default=None)


class CheckpointMismatchError(ValueError):
    """The checkpoint is of another model, or its weights do not fit the architecture it describes."""


def mark_checkpoint(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """Record which class saved ``checkpoint`` (read back by :func:`adapt_to_checkpoint`)."""
    checkpoint[MODEL_CLASS_KEY] = type(module).__name__


def _init_arguments(cls: type) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in {p.VAR_POSITIONAL, p.VAR_KEYWORD}]


def _plain(value: Any) -> Any:  # noqa: ANN401
    """Tuples as lists, recursively, so that YAML/CLI and Python values compare equal."""
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


@contextlib.contextmanager
def checkpoint_source(path: str | Path) -> Iterator[None]:
    """Name ``path`` in the errors of :func:`adapt_to_checkpoint` (for loads outside a trainer)."""
    token = _SOURCE.set(str(path))
    try:
        yield
    finally:
        _SOURCE.reset(token)


def _source(module: LightningModule) -> str:
    trainer = getattr(module, "_trainer", None)
    path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
    path = path or _SOURCE.get()
    return f"Checkpoint {path}" if path else "The checkpoint"


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _guess_model(module: LightningModule, keys: Iterable[str]) -> str | None:
    """Imported anomalib models whose constructor takes every one of ``keys`` (closest first), e.g. ``Padim``."""
    from anomalib.models import AnomalibModule

    from anomalib_dinomaly.registry import BUILTIN_ALIAS

    keys = set(keys)
    found = set()
    for candidate in _subclasses(AnomalibModule):
        if candidate is type(module) or candidate.__name__.startswith("_") and candidate.__qualname__ != BUILTIN_ALIAS:
            continue
        arguments = set(_init_arguments(candidate)) - set(COMPONENTS)
        if keys <= arguments:
            name = candidate.__qualname__
            if name == BUILTIN_ALIAS:
                name = "built-in Dinomaly (which ANOMALIB_DINOMALY_OVERRIDE=0 selects)"
            found.add((len(arguments - keys), f"{candidate.__module__.split('.')[0]}'s {name}"))
    return " or ".join(name for _, name in sorted(found)[:_LISTED]) or None


def _describe(hparams: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{key}={value!r}" for key, value in list(hparams.items())[:6])
    return shown + (", ..." if len(hparams) > 6 else "")


def _check_model_class(module: LightningModule, checkpoint: Mapping[str, Any], arguments: list[str]) -> None:
    name = type(module).__name__
    saved_class = checkpoint.get(MODEL_CLASS_KEY)
    if saved_class is not None and saved_class != name:
        msg = (
            f"{_source(module)} holds a {saved_class} model, but {name} was asked for. "
            f"Load it with {saved_class} (CLI: --model {saved_class})."
        )
        raise CheckpointMismatchError(msg)
    hparams = checkpoint.get("hyper_parameters") or {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(type(module).__init__).parameters.values())
    foreign = [] if takes_any else [key for key in hparams if key not in arguments]
    if foreign or "state_dict" not in checkpoint:
        guess = _guess_model(module, hparams) if hparams else None
        what = guess or "another model"
        msg = (
            f"{_source(module)} is not a {name} checkpoint: it looks like {what} (hyper-parameters "
            f"{_describe(hparams) or 'none'}; {name} has no {', '.join(foreign[:_LISTED]) or 'state_dict'}). "
            f"Pass a checkpoint written by {name} (results/DinomalyPlugin/.../weights/lightning/model.ckpt), "
            "or the model that wrote this one (--model ...)."
        )
        raise CheckpointMismatchError(msg)


def _rebuild(module: LightningModule, hparams: Mapping[str, Any], arguments: list[str]) -> None:
    """Replace the module's networks by those of a fresh instance built with the checkpoint's hyper-parameters."""
    current = {key: module.hparams[key] for key in arguments if key in module.hparams}
    differing = {
        key: (current.get(key), value)
        for key, value in hparams.items()
        if key in arguments and key not in WEIGHT_SOURCES and key not in COMPONENTS
        and _plain(current.get(key)) != _plain(value)
    }
    if not differing:
        return
    kwargs = {**current, **{key: hparams[key] for key in differing}}
    kwargs.update(dict.fromkeys(COMPONENTS, False), pretrained=False, encoder_weights=None)
    fresh = type(module)(**{key: value for key, value in kwargs.items() if key in arguments})
    for name, child in fresh.named_children():
        if name not in COMPONENTS:
            setattr(module, name, child)
    for key in differing:
        module.hparams[key] = hparams[key]
    logger.info(
        "%s built from the checkpoint's hyper-parameters: %s.",
        type(module).__name__,
        ", ".join(f"{key} {given!r} -> {saved!r}" for key, (given, saved) in differing.items()),
    )


def _check_weights_fit(module: LightningModule, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and hasattr(state_dict[key], "shape") and state_dict[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    problems = [
        f"{len(items)} {what} (e.g. {', '.join(items[:_LISTED])})"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if items
    ]
    name = type(module).__name__
    msg = (
        f"{_source(module)} does not fit {name}({_describe(dict(module.hparams))}): its weights have "
        f"{'; '.join(problems)}. It was written by another model or another version of {name}; load it with "
        "the model and version that wrote it."
    )
    raise CheckpointMismatchError(msg)


def adapt_to_checkpoint(module: LightningModule, checkpoint: Mapping[str, Any]) -> None:
    """Make ``module`` fit ``checkpoint`` before Lightning loads its weights, or raise one clear error.

    The checkpoint's hyper-parameters win over the ones the module was built with (an info log
    lists what changed): they describe the trained weights, the pre-processing anomalib restores from the
    checkpoint, and the score's normalisation.

    Raises:
        CheckpointMismatchError: the checkpoint was written by another model, or its weights do not fit.
    """
    arguments = _init_arguments(type(module))
    _check_model_class(module, checkpoint, arguments)
    _rebuild(module, checkpoint.get("hyper_parameters") or {}, arguments)
    if getattr(module, "strict_loading", True):
        _check_weights_fit(module, checkpoint["state_dict"])


def refresh_datamodule_resize(module: LightningModule) -> None:
    """Give the run's data sets the Resize of the pre-processing restored from the checkpoint.

    anomalib's image datamodules copy the model's Resize into their data sets when they are set up, which is
    before Lightning reads the checkpoint; without this, images would be resized for the pre-processing the
    model was built with, then again for the checkpoint's.
    """
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    update = getattr(datamodule, "_update_augmentations", None)
    if callable(update):
        update()
