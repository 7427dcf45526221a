-- Devices whose broker account was revoked (fleetpulse-hub revoke-device). The running hub's
-- settings thread removes what the device announced to Home Assistant (an empty retained
-- message on its discovery topic: HA then deletes the device) and records when; add-device
-- of the same id deletes the row.
create table device_revocations (
    device_id text primary key,
    revoked_at timestamptz not null,
    cleared_at timestamptz             -- null until the hub has removed the HA discovery
);
alter table device_revocations enable row level security;

insert into schema_migrations (version, name) values (9, '0009_device_revocations.sql')
    on conflict (version) do nothing;
