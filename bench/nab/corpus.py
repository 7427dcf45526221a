"""Read the NAB corpus (58 labelled series) from ``../shared/datasets/nab`` at run time.

The corpus (9 MB, MIT licence, Numenta) is not copied into the repository: benchmarks read
it from the shared data sets directory beside the clone, or from ``FLEETPULSE_NAB_DIR``.
Unit tests never need it.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.nab.score import Labels

ROOT = Path(__file__).resolve().parents[2]
ENV = "FLEETPULSE_NAB_DIR"


class CorpusMissing(SystemExit):
    """The NAB corpus was not found: exits with one line saying where it was looked for."""


@dataclass(frozen=True)
class Series:
    """One NAB data file: its name (``group/file.csv``), values and labels as row numbers."""

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    labels: Labels

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


def find_corpus() -> Path:
    """Return the NAB directory: ``$FLEETPULSE_NAB_DIR`` or ``shared/datasets/nab`` above."""
    if os.environ.get(ENV):
        candidates = [Path(os.environ[ENV])]
    else:
        candidates = [p / "shared" / "datasets" / "nab" for p in (ROOT.parent, ROOT.parents[1])]
    for c in candidates:
        if (c / "labels" / "combined_windows.json").is_file():
            return c
    raise CorpusMissing(
        f"NAB corpus not found in {', '.join(map(str, candidates))}: put the NAB data and "
        f"labels there (data/<group>/*.csv, labels/combined_windows.json) or set {ENV}.")


def _row(timestamps: np.ndarray, stamp: str, name: str) -> int:
    t = np.datetime64(stamp.split(".")[0].replace(" ", "T"), "s")
    i = int(np.searchsorted(timestamps, t))
    if i >= len(timestamps) or timestamps[i] != t:
        raise ValueError(f"{name}: window limit {stamp} is not a timestamp of the series")
    return i


def load(root: Path | None = None) -> list[Series]:
    """Read every series and its windows, sorted by name."""
    root = root or find_corpus()
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    out = []
    for name in sorted(windows):
        with (root / "data" / name).open(newline="") as f:
            rows = list(csv.reader(f))[1:]
        ts = np.array([r[0].replace(" ", "T") for r in rows], dtype="datetime64[s]")
        values = np.array([float(r[1]) for r in rows])
        limits = tuple((_row(ts, a, name), _row(ts, b, name)) for a, b in windows[name])
        out.append(Series(name, ts, values, Labels(len(values), limits)))
    return out
