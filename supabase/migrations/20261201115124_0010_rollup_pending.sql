-- Minutes whose rollups are behind the per-second rows (hub/rollup.py, "pending"). The hub's
-- writer marks a device-minute here in the transaction that inserts its first readings, and
-- every rollup_flush_s recomputes its marked minutes from the per-second rows and deletes the
-- marks, in one transaction. A mark left by a hub that stopped or crashed is recomputed by
-- that hub's next start (same owner: its MQTT client id), or by any hub once a day old.
create table rollup_pending (
    owner text not null,               -- the client id of the hub that wrote the readings
    device_id text not null,
    bucket timestamptz not null,       -- the minute, as metrics_1m.bucket
    created_at timestamptz not null default now(),
    primary key (owner, device_id, bucket)
);
alter table rollup_pending enable row level security;

insert into schema_migrations (version, name) values (10, '0010_rollup_pending.sql')
    on conflict (version) do nothing;
