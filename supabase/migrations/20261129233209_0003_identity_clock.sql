-- fleetpulse schema 3: device identity and clocks.
-- The metrics columns mirror shared/schema.py (tests/unit/shared/test_schema.py checks it).

-- Whether the agent's clock was synchronised when it stamped the reading (null: the agent
-- did not say), and the agent's own stamp where the hub moved the reading (hub/clock.py):
-- then ts is the hub's placement and agent_ts what the device's clock said.
alter table metrics add column clock_synced boolean;
alter table metrics add column agent_ts timestamptz;

-- One offset per agent session whose clock was not synchronised, fixed by the first such
-- reading the hub stores, so a redelivered reading gets the same ts (the same key).
create table clock_offsets (
    device_id text not null,
    session_id text not null,
    offset_ms bigint not null,        -- added to the agent's ts; 0 when the clock was trusted
    reason text not null,
    decided_at timestamptz not null,
    primary key (device_id, session_id)
);
alter table clock_offsets enable row level security;

-- Every agent session (one per agent start) of every device, with the machine it ran on
-- (hostname from its meta). Two machines that claim one device id show as two sessions
-- whose readings overlap in time; their readings stay apart by session_id.
create table device_sessions (
    device_id text not null,
    session_id text not null,
    hostname text,
    first_ts timestamptz,             -- the session's readings span first_ts .. last_ts
    last_ts timestamptz,
    first_received_at timestamptz not null,
    last_received_at timestamptz not null,
    primary key (device_id, session_id)
);
create index device_sessions_last_received_at on device_sessions (last_received_at);
alter table device_sessions enable row level security;

insert into schema_migrations (version, name) values (3, '0003_identity_clock.sql')
    on conflict (version) do nothing;
