"""Read anomaly scores and detector states for the API and the dashboard.

The read side of hub/detect: each device's anomaly rate (the share of its scored readings
above the ``anomaly`` rule's threshold) over the last hour, its detector's state (trained, or
why not: too little history), and the score per bucket of a chart's range (both tiers), for
the band the charts draw. Runs through any object with ``query(text, params)``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from hub.cold import history_source


class Querier(Protocol):
    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]: ...

RATE_WINDOW = timedelta(hours=1)
MAX_BAND_RANGE = timedelta(days=7)  # longer ranges would read every per-second score

_RATES = (
    "select d.device_id, a.scored, a.anomalous, a.max_score, t.outcome, t.message, "
    "t.history_rows, t.attempted_at, m.version, m.kind, m.trained_at, m.history_start, "
    "m.history_end from devices d "
    "left join lateral (select count(anomaly_score) as scored, "
    "count(*) filter (where anomaly_score > %(threshold)s) as anomalous, "
    "max(anomaly_score) as max_score from metrics where metrics.device_id = d.device_id "
    # Bounded by the device's newest reading, so only the newest partitions are searched.
    "and ts > d.last_seen - %(window)s and ts <= d.last_seen) a on true "
    "left join detector_training t on t.device_id = d.device_id "
    "left join lateral (select version, kind, trained_at, history_start, history_end "
    "from detector_models where detector_models.device_id = d.device_id "
    "order by version desc limit 1) m on true {where} order by d.device_id")


def detector_state(row: dict[str, Any]) -> dict[str, Any]:
    """The detector part of a device: its model, or why it has none, and its anomaly rate."""
    scored = int(row["scored"] or 0)
    model = None
    if row["version"] is not None:
        model = {"version": row["version"], "kind": row["kind"],
                 "trained_at": row["trained_at"], "history_start": row["history_start"],
                 "history_end": row["history_end"]}
    if model is not None:
        state = "trained"
    elif row["outcome"] == "too_little_history":
        state = "too_little_history"
    else:
        state = "not_trained"
    return {"device_id": row["device_id"], "state": state,
            "message": row["message"] or "not trained yet", "model": model,
            "window_s": RATE_WINDOW.total_seconds(), "scored": scored,
            "anomalous": int(row["anomalous"] or 0),
            "rate": (int(row["anomalous"] or 0) / scored) if scored else None,
            "max_score": row["max_score"]}


def anomaly_rates(db: Querier, threshold: float,
                  device_id: str | None = None) -> list[dict[str, Any]]:
    """Each device's (or one's) detector state and anomaly rate over the last hour."""
    where = "" if device_id is None else "where d.device_id = %(device)s"
    rows = db.query(_RATES.format(where=where), {"threshold": threshold, "window": RATE_WINDOW,
                                                 "device": device_id})
    return [detector_state(row) for row in rows]


def anomaly_band(db: Querier, device_id: str, start: datetime, end: datetime, step_s: float,
                 threshold: float) -> dict[str, Any]:
    """The share of anomalous readings and the highest score per ``step_s`` bucket."""
    if end - start > MAX_BAND_RANGE:
        return {"t": [], "rate": [], "max": [], "step_s": step_s,
                "note": f"anomaly marks are shown for ranges up to {MAX_BAND_RANGE.days} days"}
    rows = db.query(
        "select date_bin(make_interval(secs => %(step)s), ts, "
        "timestamptz '2000-01-01 00:00:00+00') as t, count(anomaly_score) as scored, "
        "count(*) filter (where anomaly_score > %(threshold)s) as anomalous, "
        "max(anomaly_score) as max_score from "
        + history_source(["ts", "anomaly_score"]) + " group by 1 order by 1",
        {"device": device_id, "start": start, "end": end, "step": step_s,
         "threshold": threshold})
    rows = [r for r in rows if r["scored"]]
    return {"t": [r["t"].timestamp() for r in rows],
            "rate": [r["anomalous"] / r["scored"] for r in rows],
            "max": [r["max_score"] for r in rows], "step_s": step_s, "note": None}
