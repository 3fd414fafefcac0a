"""Random-number-generator state in a form that checkpoints can hold and ``torch.load(weights_only=True)`` reads.

Lightning checkpoints do not store RNG state, so a resumed run draws different dropout masks (the
noisy bottleneck) and a different data order than the run it continues. Dinomaly saves this state in
its checkpoints and restores it when training resumes. Only tensors, ints, floats, tuples and ``None``
are stored: NumPy's key array is kept as a tensor, because ``weights_only`` loading refuses NumPy
arrays of unsigned dtypes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def collect_rng_state() -> dict[str, Any]:
    """The global state of Python's, NumPy's, torch's CPU and every CUDA generator of this process."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_state`'s output; CUDA states only for devices that exist."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        ),
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
