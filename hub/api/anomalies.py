"""Routes of anomaly detection: each device's detector state and anomaly rate, and the
score band of a device's chart range (hub/anomalies.py reads them)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from hub.alerts import Rule
from hub.api.deps import Auth, Clock, Context, Reader, When, require_device, time_range

router = APIRouter(dependencies=[Auth])
DEFAULT_THRESHOLD = 0.5  # the anomaly rule's default (hub/alerts.py)


class ModelOut(BaseModel):
    version: int
    kind: str
    trained_at: datetime
    history_start: datetime
    history_end: datetime


class AnomalyOut(BaseModel):
    device_id: str
    state: str  # "trained", "too_little_history" or "not_trained"
    message: str  # the last training's outcome, e.g. why there is no model
    model: ModelOut | None
    window_s: float  # the rate's window, up to the device's newest reading
    scored: int
    anomalous: int  # scored above the anomaly rule's threshold
    rate: float | None  # anomalous / scored
    max_score: float | None


class AnomalyBandOut(BaseModel):
    device_id: str
    step_s: float
    threshold: float
    t: list[float]  # bucket starts, Unix seconds
    rate: list[float]  # share of the bucket's scored readings above the threshold
    max: list[float | None]
    note: str | None  # why there is no band (a range too long)


# The fleet's rates read an hour of scores per device: shared by every dashboard for this long
# (a fleet page asks every 10 s).
RATES_MAX_AGE_S = 30.0
_rates_lock = threading.Lock()


def _rates_cache(request: Request) -> dict[tuple[float, str | None],
                                          tuple[float, list[dict[str, Any]]]]:
    """This application's cache of the rates (in ``app.state``: one per app)."""
    state = request.app.state
    if not hasattr(state, "anomaly_rates"):
        state.anomaly_rates = {}
    cache: dict[tuple[float, str | None], tuple[float, list[dict[str, Any]]]] = \
        state.anomaly_rates
    return cache


def threshold_of(rules: tuple[Rule, ...]) -> float:
    return next((r.threshold for r in rules if r.name == "anomaly"), DEFAULT_THRESHOLD)


@router.get("/api/anomalies", response_model=list[AnomalyOut])
def anomalies(request: Request, reader: Reader, context: Context,
              device: str | None = None) -> list[dict[str, Any]]:
    """Each device's (or one's) anomaly model and the share of its last hour's readings it
    found unusual (above the ``anomaly`` rule's threshold); up to 30 s old."""
    key = (threshold_of(context.rules), device)
    with _rates_lock:
        rates = _rates_cache(request)
        cached = rates.get(key)
        if cached is None or time.monotonic() - cached[0] > RATES_MAX_AGE_S:
            if len(rates) > 1000:  # one entry per device page asked: keep it bounded
                rates.clear()
            cached = rates[key] = (time.monotonic(), reader.anomaly_rates(key[0], device))
    return cached[1]


@router.get("/api/devices/{device_id}/anomalies", response_model=AnomalyBandOut)
def anomaly_band(device_id: str, reader: Reader, clock: Clock, context: Context,
                 start: When = None, end: When = None,
                 step_s: Annotated[float, Query(ge=1, le=86400)] = 60) -> dict[str, Any]:
    """Per ``step_s`` bucket of [start, end): the share of readings scored above the anomaly
    threshold and the highest score (ranges up to 7 days; both tiers)."""
    start_, end_ = time_range(start, end, clock())
    require_device(reader, device_id)
    threshold = threshold_of(context.rules)
    return {"device_id": device_id, "threshold": threshold,
            **reader.anomaly_band(device_id, start_, end_, step_s, threshold)}
