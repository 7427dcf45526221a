"""Serialise a detector's parameters and state to bytes and back; pure.

Format: an ``.npz`` archive (numpy's zip of arrays, read with ``allow_pickle=False``) holding
the state arrays and one ``__params__`` entry with the parameters as JSON text, so a stored
model needs nothing but numpy to load and never executes code.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]

_PARAMS = "__params__"


def dump(kind: str, params: dict[str, Any], state: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """Pack a model of ``kind`` (its parameters and state arrays) into bytes."""
    buf = io.BytesIO()
    header = json.dumps({"kind": kind, "params": params})
    arrays: dict[str, Any] = {_PARAMS: np.array(header), **state}
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def load(data: bytes, kind: str) -> tuple[dict[str, Any], dict[str, Floats]]:
    """Unpack bytes made by :func:`dump`; ValueError if they hold another kind of model."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        header = json.loads(str(npz[_PARAMS]))
        if header.get("kind") != kind:
            raise ValueError(f"stored model is a {header.get('kind')!r}, not a {kind!r}")
        state = {k: np.array(npz[k], dtype=np.float64) for k in npz.files if k != _PARAMS}
    return dict(header["params"]), state


def squash(z: Floats) -> Floats:
    """Map a non-negative surprise to [0, 1) keeping its order: z / (1 + z)."""
    z = np.maximum(z, 0.0)
    out: Floats = z / (1.0 + z)
    return out
