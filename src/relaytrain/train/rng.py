"""Capture and restore every random number generator a trainer draws from, as one JSON-safe dict.

Python's ``random``, NumPy's legacy global generator, torch's CPU generator and, when CUDA is
available, every CUDA device's generator. The snapshot is plain JSON (lists, numbers and
base64 strings), so it lives in ``trainer_state.json`` beside the step and the data cursor.

Public API: ``seed_everything(seed)``, ``capture_rng_state()``, ``restore_rng_state(state)``.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def capture_rng_state() -> dict[str, Any]:
    """A JSON-safe snapshot of every generator (see the module docstring)."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": _b64(np.asarray(keys, dtype=np.uint32).tobytes()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": _b64(torch.get_rng_state().numpy().tobytes()),
        "cuda": None,
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back as ``capture_rng_state`` found it.

    CUDA states are restored when CUDA is available and the snapshot has them, one per
    device (a snapshot from a machine with more devices restores the first ones).
    """
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = np.frombuffer(_unb64(npy["keys"]), dtype=np.uint32).copy()
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(torch.frombuffer(bytearray(_unb64(state["torch"])), dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for device, encoded in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.frombuffer(bytearray(_unb64(encoded)), dtype=torch.uint8), device)
