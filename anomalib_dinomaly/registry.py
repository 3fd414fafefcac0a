"""How ``Dinomaly`` in anomalib (``--model Dinomaly``, ``get_model("Dinomaly")``) resolves to this plugin.

anomalib has no plugin mechanism. Its CLI resolves a bare class name among the imported
subclasses of ``AnomalibModule`` through jsonargparse, which refuses a name that two public
classes share; ``get_model`` takes the last subclass with that name; ``anomalib.models.Dinomaly``
is a plain attribute. :func:`register` therefore

1. points ``anomalib.models.Dinomaly`` and ``anomalib.models.image.Dinomaly`` at the plugin,
2. gives anomalib's built-in class a private qualified name (``_BuiltinDinomaly``, importable from
   its module), so jsonargparse no longer lists it and the bare name is unambiguous.

It runs when ``anomalib.models`` is first imported (see :mod:`anomalib_dinomaly._hook`, installed
as a ``.pth`` file, costing nothing until then) and whenever ``anomalib_dinomaly.Dinomaly`` is
imported. ``ANOMALIB_DINOMALY_OVERRIDE=0`` turns it off: then ``Dinomaly`` is anomalib's own model
and this one stays reachable as ``anomalib_dinomaly.Dinomaly``.
"""

from __future__ import annotations

import importlib
import sys

from anomalib_dinomaly._hook import ENV_SWITCH, override_enabled

__all__ = ["ENV_SWITCH", "BUILTIN_ALIAS", "register", "override_enabled"]

BUILTIN_ALIAS = "_BuiltinDinomaly"


def register() -> bool:
    """Make ``Dinomaly`` resolve to :class:`anomalib_dinomaly.Dinomaly` inside anomalib.

    Returns:
        bool: ``True`` if the override is active, ``False`` if it was switched off by the
        environment variable ``ANOMALIB_DINOMALY_OVERRIDE``.
    """
    if not override_enabled():
        return False

    # import_module, not attribute access: this may run while anomalib.models is finishing its import.
    models = importlib.import_module("anomalib.models")
    image_models = importlib.import_module("anomalib.models.image")

    from anomalib_dinomaly.lightning_model import Dinomaly

    builtin = vars(image_models).get("Dinomaly")
    if builtin is not None and builtin is not Dinomaly:
        builtin.__qualname__ = BUILTIN_ALIAS
        setattr(sys.modules[builtin.__module__], BUILTIN_ALIAS, builtin)
    models.Dinomaly = Dinomaly
    image_models.Dinomaly = Dinomaly
    return True
