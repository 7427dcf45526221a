"""Routes of the alerts: the fleet's, one device's, and the rules in force."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hub.api.deps import Auth, Context, Reader, require_device
from hub.api.models import AlertOut, RuleOut, rule_out

router = APIRouter(dependencies=[Auth])
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/api/devices/{device_id}/alerts", response_model=list[AlertOut])
def device_alerts(device_id: str, reader: Reader, open: bool = False,
                  limit: Limit = 100) -> list[AlertOut]:
    """A device's alerts, open ones first, newest first."""
    require_device(reader, device_id)
    return [AlertOut.model_validate(row) for row in reader.alerts(device_id, open, limit)]


@router.get("/api/alerts", response_model=list[AlertOut])
def alerts(reader: Reader, open: bool = False, device: str | None = None,
           limit: Limit = 100) -> list[AlertOut]:
    """Alerts of the fleet (or one device), open ones first."""
    return [AlertOut.model_validate(row) for row in reader.alerts(device, open, limit)]


@router.get("/api/rules", response_model=list[RuleOut])
def alert_rules(context: Context) -> list[RuleOut]:
    """The alert rules in force."""
    return [rule_out(r) for r in context.rules]
