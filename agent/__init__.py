"""The fleetpulse agent: collect → encode → publish (spool while the broker is away)."""
