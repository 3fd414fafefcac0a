"""How ``Dinomaly`` and ``Dinomaly2`` in anomalib (``--model Dinomaly2``, ``get_model("Dinomaly2")``) resolve to
this plugin.

anomalib has no plugin mechanism. Its CLI resolves a bare class name among the imported
subclasses of ``AnomalibModule`` through jsonargparse, which refuses a name that two public
classes share; ``get_model`` takes the last subclass with that name; ``anomalib.models.Dinomaly``
is a plain attribute. :func:`register` therefore

1. points ``anomalib.models.Dinomaly`` and ``anomalib.models.image.Dinomaly`` at the plugin,
2. gives anomalib's built-in class a private qualified name (``_BuiltinDinomaly``, importable from
   its module), so jsonargparse no longer lists it and the bare name is unambiguous,
3. imports :class:`anomalib_dinomaly.Dinomaly2` (anomalib has no model of that name) and sets
   ``anomalib.models.Dinomaly2``, so the CLI and ``get_model`` see it.

It runs when ``anomalib.models`` is first imported (see :mod:`anomalib_dinomaly._hook`, installed
as a ``.pth`` file, costing nothing until then) and whenever ``anomalib_dinomaly.Dinomaly`` is
imported. ``ANOMALIB_DINOMALY_OVERRIDE=0`` turns it off: then ``Dinomaly`` is anomalib's own model
and this one stays reachable as ``anomalib_dinomaly.Dinomaly``.
"""

from __future__ import annotations

import importlib
import sys

from anomalib_dinomaly._hook import ENV_SWITCH, override_enabled

__all__ = ["ENV_SWITCH", "BUILTIN_ALIAS", "register", "register_dinomaly2", "override_enabled"]

BUILTIN_ALIAS = "_BuiltinDinomaly"


def register() -> bool:
    """Make ``Dinomaly`` resolve to :class:`anomalib_dinomaly.Dinomaly` inside anomalib.

    Returns:
        bool: ``True`` if the override is active, ``False`` if it was switched off by the
        environment variable ``ANOMALIB_DINOMALY_OVERRIDE``.
    """
    # import_module, not attribute access: this may run while anomalib.models is finishing its import.
    models = importlib.import_module("anomalib.models")
    image_models = importlib.import_module("anomalib.models.image")
    register_dinomaly2()
    if not override_enabled():
        return False

    from anomalib_dinomaly.lightning_model import Dinomaly

    builtin = vars(image_models).get("Dinomaly")
    if builtin is not None and builtin is not Dinomaly:
        builtin.__qualname__ = BUILTIN_ALIAS
        setattr(sys.modules[builtin.__module__], BUILTIN_ALIAS, builtin)
    models.Dinomaly = Dinomaly
    image_models.Dinomaly = Dinomaly
    return True


def register_dinomaly2() -> None:
    """Set ``anomalib.models.Dinomaly2`` (no anomalib model has that name, so the environment switch does not apply).

    While ``anomalib_dinomaly.dinomaly2`` is still being imported it does nothing: that module calls this
    function itself once its class exists.
    """
    module = sys.modules.get("anomalib_dinomaly.dinomaly2") or importlib.import_module("anomalib_dinomaly.dinomaly2")
    dinomaly2 = getattr(module, "Dinomaly2", None)
    if dinomaly2 is None:
        return
    for package in ("anomalib.models", "anomalib.models.image"):
        setattr(importlib.import_module(package), "Dinomaly2", dinomaly2)
