-- fleetpulse schema 8: settings changed remotely, the hub's side (README "Settings changed
-- remotely"; hub/remote.py decides, hub/sync.py sends).

-- What each device last reported on its retained <prefix>/<id>/config (validated by
-- hub/remote.py; a malformed one goes to quarantine instead). A device with no row has
-- never reported: its agent is older than remote settings (or has never connected).
create table device_config (
    device_id text primary key,
    config jsonb not null,            -- the message as the device sent it
    received_at timestamptz not null  -- the hub's clock
);
alter table device_config enable row level security;

-- What the hub wants each device's settings to be: one row per device and setting, the
-- latest request. value null: back to the device's own (local) value.
create table device_settings (
    device_id text not null,
    setting text not null,
    value double precision,
    requested_at timestamptz not null,
    requested_by text not null,
    state text not null check (state in ('pending', 'applied', 'refused')),
    sent_at timestamptz,              -- last sent on <prefix>/<id>/set/<setting>
    send_count integer not null default 0,  -- sends since the device last came online
    refusal_seen double precision,    -- the device's last_refusal.at when it was sent
    applied_at timestamptz,
    refused_at timestamptz,
    reason text,                      -- why refused (the agent's words), or still pending
    primary key (device_id, setting)
);
create index device_settings_pending on device_settings (device_id) where state = 'pending';
alter table device_settings enable row level security;

insert into schema_migrations (version, name) values (8, '0008_device_settings.sql')
    on conflict (version) do nothing;
