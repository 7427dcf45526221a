"""Score every reading as the hub ingests it, batch by batch, from models held in memory.

No database read per reading: the models are installed once (at the hub's start, and by the
retraining thread: :meth:`LiveScorer.install`, from any thread) and the ingest path calls
:meth:`LiveScorer.score` with a batch's rows, which returns them with ``anomaly_score`` set
(the largest of the reading's per-signal scores, in [0, 1); None where the device has no
model yet).

Cost: one Novelty step costs ~300 µs whatever ``k`` is small, but ~5 µs per reading when a
thousand devices' signals go through one call (docs/anomaly.md). So the Novelty models of all
devices live side by side in one stacked detector (their parameters must agree; they do when
trained by the same settings) and a batch is scored in rounds: the first reading of every
device in the batch, then the second, … Each round is one step: over the whole stack with the
absent devices' values NaN ("no value", state left alone) when at least half the devices are
in the round, else over a gathered copy of the present devices' state (a replayed spool of one
device must not cost a whole fleet's step per reading). Other detector kinds are stepped one
device at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from hub.detect.features import SIGNALS, SOURCE_COLUMNS, signal_rows
from hub.detect.model import Floats
from hub.detect.novelty import Novelty
from hub.detect.train import Detector

Row = tuple[Any, ...]


@dataclass
class ScoreStats:
    readings: int = 0  # rows seen
    scored: int = 0  # rows given a score (their device had a model)
    cpu_s: float = 0.0  # this thread's CPU inside score()

    @property
    def us_per_reading(self) -> float | None:
        return None if not self.readings else 1e6 * self.cpu_s / self.readings


class _Stack:
    """The Novelty states of many devices, concatenated along the stream axis."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.slots: dict[str, int] = {}
        self.detector: Novelty | None = None

    def put(self, models: Sequence[tuple[str, Novelty]]) -> None:
        """Install ``(device_id, detector)`` pairs: a device already here gets its slice
        overwritten, new ones are appended in one concatenation (a hub starting with a
        thousand models must not copy the growing stack a thousand times)."""
        s = len(SIGNALS)
        added: list[Novelty] = []
        for device_id, detector in models:  # device ids are unique in one call
            slot = self.slots.get(device_id)
            if slot is None:
                self.slots[device_id] = len(self.slots)
                added.append(detector)
                continue
            assert self.detector is not None
            for name, array in detector.state.items():
                self.detector.state[name][slot * s:(slot + 1) * s] = array
        if not added:
            return
        parts = ([self.detector.state] if self.detector is not None else []) + [
            d.state for d in added]
        grown = Novelty(k=len(self.slots) * s, **self.params)
        grown.state = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        self.detector = grown

    def step(self, slots: Sequence[int], x: Floats) -> Floats:
        """Step the devices at ``slots`` with their signals ``x`` (rows); return their scores."""
        assert self.detector is not None
        s = len(SIGNALS)
        fleet = self.detector
        devices = len(self.slots)
        index = np.asarray(slots)
        if 2 * len(slots) >= devices:
            full = np.full((devices, s), np.nan)
            full[index] = x
            scores: Floats = fleet.step(full.ravel()).reshape(devices, s)[index]
            return scores
        streams = (index[:, None] * s + np.arange(s)).ravel()
        part = Novelty(k=len(streams), **self.params)
        part.state = {n: a[streams] for n, a in fleet.state.items()}
        scores = part.step(x.ravel()).reshape(len(slots), s)
        for name, array in part.state.items():
            fleet.state[name][streams] = array
        return scores


# Parameters the stack does not compare: ``k`` (the stack has its own) and those only training
# reads, so models that differ in them step alike and share the stack (a model trained before
# ``shift_clip`` and its device's retrained one, say).
_NOT_COMPARED = ("k", "shift_clip")


def _novelty_params(detector: Novelty) -> dict[str, Any]:
    return {k: v for k, v in detector.params().items() if k not in _NOT_COMPARED}


class LiveScorer:
    """Hold every device's detector and score batches of ``metrics`` rows."""

    def __init__(self, columns: Sequence[str]) -> None:
        position = {name: i for i, name in enumerate(columns)}
        self._pick = itemgetter(*(position[c] for c in SOURCE_COLUMNS))
        self._device = position["device_id"]
        self._score = position["anomaly_score"]
        self._lock = threading.Lock()
        self._incoming: dict[str, Detector] = {}  # installed, not yet taken by score()
        self._stack: _Stack | None = None
        self._single: dict[str, Detector] = {}
        self.stats = ScoreStats()

    def install(self, device_id: str, detector: Detector) -> None:
        """Use ``detector`` for ``device_id`` from the next batch on (any thread)."""
        with self._lock:
            self._incoming[device_id] = detector

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, {}
        stacked: list[tuple[str, Novelty]] = []
        for device_id, detector in incoming.items():
            if isinstance(detector, Novelty) and detector.k == len(SIGNALS):
                params = _novelty_params(detector)
                if self._stack is None:
                    self._stack = _Stack(params)
                if self._stack.params == params:
                    self._single.pop(device_id, None)
                    stacked.append((device_id, detector))
                    continue
            if self._stack is not None and device_id in self._stack.slots:
                # Moving off the stack would leave a hole; a device changes detector kind
                # only when the settings change, which a restart applies.
                continue
            self._single[device_id] = detector
        if stacked:
            assert self._stack is not None
            self._stack.put(stacked)

    @property
    def devices(self) -> int:
        return len(self._single) + (len(self._stack.slots) if self._stack else 0)

    def score(self, rows: Sequence[Row]) -> list[Row]:
        """Return ``rows`` with ``anomaly_score`` set, scoring them in order per device."""
        began = time.thread_time()
        self._take_incoming()
        scores: list[float | None] = [None] * len(rows)
        stack = self._stack
        stacked: dict[str, list[int]] = {}
        single: list[int] = []
        for i, row in enumerate(rows):
            device = row[self._device]
            if stack is not None and device in stack.slots:
                stacked.setdefault(device, []).append(i)
            elif device in self._single:
                single.append(i)
        wanted = [i for positions in stacked.values() for i in positions] + single
        if wanted:
            signals = signal_rows(self._pick(rows[i]) for i in wanted)
            where = {row_index: n for n, row_index in enumerate(wanted)}
            if stacked:
                assert stack is not None
                depth = max(len(p) for p in stacked.values())
                for r in range(depth):  # the r-th reading of each device in the batch
                    present = [(stack.slots[d], p[r]) for d, p in stacked.items() if len(p) > r]
                    x = signals[[where[i] for _, i in present]]
                    best = stack.step([slot for slot, _ in present], x).max(axis=1)
                    for (_, i), value in zip(present, best, strict=True):
                        scores[i] = float(value)
            for i in single:
                detector = self._single[rows[i][self._device]]
                scores[i] = float(detector.step(signals[where[i]]).max())
        out = [row if score is None else (*row[:self._score], score, *row[self._score + 1:])
               for row, score in zip(rows, scores, strict=True)]
        self.stats.readings += len(rows)
        self.stats.scored += len(wanted)
        self.stats.cpu_s += time.thread_time() - began
        return out
