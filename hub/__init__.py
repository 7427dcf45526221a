"""The fleetpulse hub: receive → validate → batch → write → status / api / web."""
