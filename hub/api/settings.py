"""Routes of settings changed remotely: read a device's, change one device's or many at once.

    GET  /api/devices/{id}/settings   requested, reported, source, state (pending, applied,
                                      refused with the agent's reason), bounds
    PUT  /api/devices/{id}/settings   change some of one device's settings
    POST /api/settings                change the settings of listed devices, or of "all"

A change is checked with the agent's own rules (``shared/remote.py``), and with the bounds
the device itself reports (an agent of another version may have others): a value it would
refuse is a 422 here (skipped with the reason in a bulk change), and nothing is recorded.
What is recorded is sent by the hub's ``settings`` thread (``hub/sync.py``) while the
device is online, and again when it comes back. A device whose agent never reported its
settings (an agent older than remote settings) cannot be set: 409 for one device,
``accepted: false`` in a bulk change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from hub.api.deps import Auth, Clock, Context, Reader, require_device
from hub.remote import Request as SetRequest
from hub.remote import check_change, outside_reported, waiting_reason
from hub.sync import SettingsDesk
from shared.remote import BOUNDS, Refused, bounds_json

router = APIRouter(dependencies=[Auth])

NOT_SUPPORTED = ("the agent of {id!r} has never reported its settings, so it does not take "
                 "settings remotely: upgrade its agent (and the broker's acl, see README "
                 "\"Settings changed remotely\"), or wait until it has connected once")


class SettingsChange(BaseModel):
    """Settings to change; the ones left out stay as they are, null goes back to the
    device's own value."""

    model_config = ConfigDict(extra="forbid", strict=True)
    interval_s: float | None = None
    process_period_s: float | None = None
    process_top_n: int | None = None


class BulkChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    devices: list[str] | Literal["all"]
    settings: SettingsChange


class BoundOut(BaseModel):
    min: float
    max: float
    zero_is_off: bool
    type: str


class SettingOut(BaseModel):
    setting: str
    reported: float | None  # in effect, as the device last reported
    source: str | None  # local (the device's own) or remote
    bounds: BoundOut
    requested: bool  # the hub was asked to change it
    desired: float | None  # the value asked for (null: back to the device's own)
    state: Literal["pending", "applied", "refused"] | None
    reason: str | None  # why refused (the agent's words), or why still pending
    requested_at: datetime | None
    requested_by: str | None
    sent_at: datetime | None
    applied_at: datetime | None
    refused_at: datetime | None


class RefusalOut(BaseModel):
    at: datetime  # by the device's clock
    topic: str
    payload: str
    reason: str


class DeviceSettingsOut(BaseModel):
    device_id: str
    supported: bool
    note: str | None
    status: str | None
    reported_at: datetime | None
    settings: list[SettingOut]
    last_refusal: RefusalOut | None  # the device's latest refusal, whoever sent the set


class BulkResult(BaseModel):
    device_id: str
    accepted: bool
    reason: str | None


class BulkOut(BaseModel):
    accepted: int
    results: list[BulkResult]


def get_desk(context: Context) -> SettingsDesk:
    if context.settings is None:
        raise HTTPException(503, "this hub does not change settings (no broker connection)")
    return context.settings


Desk = Annotated[SettingsDesk, Depends(get_desk)]


def settings_out(device_id: str, reported: dict[str, Any] | None,
                 requests: list[dict[str, Any]]) -> DeviceSettingsOut:
    """Build the view of one device's settings from its report and its requests (pure)."""
    config = reported["config"] if reported else None
    status = reported["status"] if reported else None
    by_name = {r["setting"]: r for r in requests}
    bounds = config["bounds"] if config else bounds_json()
    # In the agent's order (jsonb keeps its keys sorted by length), then any others.
    names = list(dict.fromkeys([*(n for n in BOUNDS if n in bounds), *bounds, *by_name]))
    out = []
    for name in names:
        row = by_name.get(name)
        reason = row["reason"] if row else None
        if row and row["state"] == "pending":
            reason = waiting_reason(SetRequest(device_id, name, row["value"], "pending",
                                               row["sent_at"], row["send_count"]),
                                    config, status)
        bound = bounds.get(name) or {"min": 0, "max": 0, "zero_is_off": False, "type": "number"}
        out.append(SettingOut(
            setting=name, reported=config["settings"].get(name) if config else None,
            source=config["source"].get(name) if config else None,
            bounds=BoundOut(**bound), requested=row is not None,
            desired=row["value"] if row else None, state=row["state"] if row else None,
            reason=reason, requested_at=row["requested_at"] if row else None,
            requested_by=row["requested_by"] if row else None,
            sent_at=row["sent_at"] if row else None,
            applied_at=row["applied_at"] if row else None,
            refused_at=row["refused_at"] if row else None))
    refusal = config["last_refusal"] if config else None
    return DeviceSettingsOut(
        device_id=device_id, supported=config is not None,
        note=None if config else NOT_SUPPORTED.format(id=device_id), status=status,
        reported_at=reported["received_at"] if config and reported else None, settings=out,
        last_refusal=RefusalOut(at=datetime.fromtimestamp(refusal["at"], UTC),
                                topic=refusal["topic"], payload=refusal["payload"],
                                reason=refusal["reason"]) if refusal else None)


def checked(change: SettingsChange) -> dict[str, float | None]:
    """The change's values checked by the agent's rules; 422 with the reason if one fails."""
    given = {name: getattr(change, name) for name in change.model_fields_set}
    if not given:
        raise HTTPException(422, "nothing to change: give at least one of "
                                 + ", ".join(BOUNDS))
    try:
        return check_change(given)
    except Refused as exc:
        raise HTTPException(422, exc.reason) from exc


def _who(request: Request) -> str:
    return f"api {request.client.host}" if request.client else "api"


@router.get("/api/devices/{device_id}/settings", response_model=DeviceSettingsOut)
def device_settings(device_id: str, reader: Reader, desk: Desk) -> DeviceSettingsOut:
    """A device's settings: requested and reported, their state, bounds, last refusal."""
    require_device(reader, device_id)
    return settings_out(device_id, desk.reported([device_id]).get(device_id),
                        desk.requests(device_id))


@router.put("/api/devices/{device_id}/settings", response_model=DeviceSettingsOut)
def change_settings(device_id: str, change: SettingsChange, request: Request, reader: Reader,
                    desk: Desk, clock: Clock) -> DeviceSettingsOut:
    """Change some of a device's settings; sent while it is online, applied at its next
    tick (see the state in the answer, or GET it again)."""
    values = checked(change)
    require_device(reader, device_id)
    reported = desk.reported([device_id]).get(device_id)
    if reported is None or reported["config"] is None:
        raise HTTPException(409, NOT_SUPPORTED.format(id=device_id))
    problem = outside_reported(values, reported["config"])
    if problem is not None:
        raise HTTPException(422, f"{device_id}: {problem}")
    desk.request([device_id], values, _who(request), clock())
    return settings_out(device_id, reported, desk.requests(device_id))


@router.post("/api/settings", response_model=BulkOut)
def change_many(body: BulkChange, request: Request, reader: Reader, desk: Desk,
                clock: Clock) -> BulkOut:
    """Change the settings of many devices at once (a list of ids, or "all"); each
    device's result says whether it was accepted, and why not."""
    values = checked(body.settings)
    if body.devices == "all":
        ids = [row["device_id"] for row in reader.devices()]
    else:
        ids = list(dict.fromkeys(body.devices))
    reported = desk.reported(ids)
    results = []
    for device_id in ids:
        row = reported.get(device_id)
        if row is None:
            results.append(BulkResult(device_id=device_id, accepted=False,
                                      reason=f"device {device_id!r} is not known"))
        elif row["config"] is None:
            results.append(BulkResult(device_id=device_id, accepted=False,
                                      reason=NOT_SUPPORTED.format(id=device_id)))
        elif (problem := outside_reported(values, row["config"])) is not None:
            results.append(BulkResult(device_id=device_id, accepted=False, reason=problem))
        else:
            results.append(BulkResult(device_id=device_id, accepted=True, reason=None))
    chosen = [r.device_id for r in results if r.accepted]
    if chosen:
        desk.request(chosen, values, _who(request), clock())
    return BulkOut(accepted=len(chosen), results=results)
