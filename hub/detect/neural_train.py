"""Train the neural models with PyTorch and export their weights as numpy arrays.

Only training imports torch (the ``train`` extra); scoring runs in numpy from the exported
arrays (:mod:`hub.detect.autoencoder`, :mod:`hub.detect.sequence`). Training uses one CPU
thread and a fixed number of optimiser steps on sampled windows, so its cost does not grow
with the length of the history. Seeded: the same history gives the same weights.

    python3 -m hub.detect.neural_train --fixture tests/unit/hub/detect/data/neural_fixture.npz

writes the small fixture the unit tests use to check numpy's inference against PyTorch's
(weights, inputs and PyTorch's outputs), so CI needs no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from hub.detect.model import Floats

AE_STEPS = 300
AE_BATCH = 64
SEQ_STEPS = 300
SEQ_BATCH = 16
SEQ_CHUNK = 48
SEQ_WARMUP = 8  # first positions of a chunk carry no loss: the state is still cold


def _init(*shape: int, fan_in: int) -> torch.Tensor:
    bound = 1.0 / np.sqrt(fan_in)
    return ((torch.rand(*shape) * 2.0 - 1.0) * bound).requires_grad_()


def _ae_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Each stream's autoencoder on its windows ``x`` (k, n, window); matches numpy's."""
    h = torch.tanh(torch.baddbmm(p["b1"][:, None, :], x, p["w1"]))
    c = torch.baddbmm(p["b2"][:, None, :], h, p["w2"])
    h = torch.tanh(torch.baddbmm(p["b3"][:, None, :], c, p["w3"]))
    return torch.baddbmm(p["b4"][:, None, :], h, p["w4"])


def train_autoencoder(windows: Floats, hidden: int, code: int, seed: int = 0,
                      steps: int = AE_STEPS, batch: int = AE_BATCH, lr: float = 1e-2
                      ) -> dict[str, Floats]:
    """Train one autoencoder per stream on its windows (k, n, window; NaN = incomplete).

    All streams train together (batched matrix products, each with its own weights); each
    stream's loss is the mean squared error over its complete windows in the batch.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    k, n, w = windows.shape
    sizes = [(w, hidden), (hidden, code), (code, hidden), (hidden, w)]
    p: dict[str, torch.Tensor] = {}
    for i, (a, b) in enumerate(sizes, start=1):
        p[f"w{i}"] = _init(k, a, b, fan_in=a)
        p[f"b{i}"] = _init(k, b, fan_in=a)
    opt = torch.optim.Adam(list(p.values()), lr=lr)
    complete: npt.NDArray[np.bool_] = np.asarray(~np.isnan(windows).any(axis=2))
    streams = np.arange(k)[:, None]
    for _ in range(steps if n else 0):
        idx = rng.integers(0, n, (k, batch))
        valid = torch.from_numpy(complete[streams, idx].astype(np.float32))
        x = torch.from_numpy(np.nan_to_num(windows[streams, idx]).astype(np.float32))
        err = ((_ae_forward(p, x) - x) ** 2).mean(dim=2) * valid
        loss = (err.sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {name: t.detach().numpy().astype(np.float64) for name, t in p.items()}


class _Seq(torch.nn.Module):  # type: ignore[misc]  # torch is untyped to mypy
    def __init__(self, hidden: int, horizon: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(2, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        y: torch.Tensor = self.head(out)
        return y


def sequence_inputs(z: Floats) -> Floats:
    """The LSTM's input per step: the normalised value and its change since the last step."""
    z = np.asarray(z, dtype=np.float64)
    return np.stack([z, np.diff(z, prepend=z[:1])], axis=-1)


def sequence_targets(z: Floats, horizon: int) -> Floats:
    """What the LSTM learns at step t: ``z[t + h] - z[t]`` for h = 1..horizon (NaN past end)."""
    n = len(z)
    out = np.full((n, horizon), np.nan)
    for h in range(1, horizon + 1):
        out[: n - h, h - 1] = z[h:] - z[: n - h]
    return out


def _export_sequence(m: _Seq) -> dict[str, Floats]:
    lstm = m.lstm
    return {"w_ih": lstm.weight_ih_l0.detach().numpy().astype(np.float64),
            "w_hh": lstm.weight_hh_l0.detach().numpy().astype(np.float64),
            "b": (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy().astype(np.float64),
            "head_w": m.head.weight.detach().numpy().astype(np.float64),
            "head_b": m.head.bias.detach().numpy().astype(np.float64)}


def train_sequence(z: Floats, hidden: int, horizon: int, seed: int = 0,
                   steps: int = SEQ_STEPS, batch: int = SEQ_BATCH, chunk: int = SEQ_CHUNK,
                   lr: float = 1e-2) -> dict[str, Floats]:
    """Train one LSTM forecaster on a normalised stream ``z`` (T,), NaN-free.

    It reads ``(z, dz)`` step by step and predicts the next ``horizon`` changes from the
    current value; trained on random chunks of ``chunk`` steps from a cold state.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    z = np.asarray(z, dtype=np.float64)
    m = _Seq(hidden, horizon)
    chunk = min(chunk, len(z) - 1)
    if chunk < SEQ_WARMUP + 2:
        return _export_sequence(m)
    inputs = sequence_inputs(z).astype(np.float32)
    targets = sequence_targets(z, horizon).astype(np.float32)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    offsets = np.arange(chunk)
    for _ in range(steps):
        starts = rng.integers(0, len(z) - chunk + 1, batch)
        rows = starts[:, None] + offsets
        x = torch.from_numpy(inputs[rows])
        y = targets[rows][:, SEQ_WARMUP:]
        mask = torch.from_numpy(~np.isnan(y))
        pred = m(x)[:, SEQ_WARMUP:]
        diff = (pred - torch.from_numpy(np.nan_to_num(y))) * mask
        loss = (diff ** 2).sum() / mask.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _export_sequence(m)


def write_fixture(path: Path) -> None:
    """Save tiny random weights, inputs and PyTorch's outputs for the numpy-side tests."""
    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    k, w, hidden, code = 3, 6, 4, 2
    p = {}
    for i, (a, b) in enumerate([(w, hidden), (hidden, code), (code, hidden), (hidden, w)], 1):
        p[f"w{i}"] = _init(k, a, b, fan_in=a).detach() * 3.0
        p[f"b{i}"] = _init(k, b, fan_in=a).detach()
    windows = rng.normal(0.0, 1.5, (k, 5, w))
    with torch.no_grad():
        out = _ae_forward(p, torch.from_numpy(windows).float())
    arrays: dict[str, Floats] = {f"ae_{n}": t.numpy() for n, t in p.items()}
    arrays["ae_windows"] = windows.astype(np.float32)
    arrays["ae_expected"] = out.numpy()
    # One LSTM per stream, run by torch.nn.LSTM over a whole sequence (its own kernels).
    hidden_s, horizon, steps = 5, 4, 30
    seqs = np.cumsum(rng.normal(0.0, 0.3, (2, steps)), axis=1)
    for j in range(2):
        m = _Seq(hidden_s, horizon)
        with torch.no_grad():
            for prm in m.parameters():
                prm.mul_(3.0)
            y = m(torch.from_numpy(sequence_inputs(seqs[j])[None].astype(np.float32)))[0]
        for name, value in _export_sequence(m).items():
            arrays[f"seq{j}_{name}"] = value.astype(np.float32)
        arrays[f"seq{j}_expected"] = y.numpy()
    arrays["seq_inputs"] = seqs.astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, allow_pickle=False, **arrays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, required=True, metavar="PATH",
                    help="write the unit tests' weights fixture to PATH (.npz)")
    write_fixture(ap.parse_args().fixture)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
