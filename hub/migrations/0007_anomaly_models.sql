-- fleetpulse schema 7: anomaly detection and forecasts (hub/detect/).
-- The metrics columns mirror shared/schema.py (tests/unit/shared/test_schema.py checks it).

-- Each reading's anomaly score in [0, 1), from its device's detector as the hub ingested it
-- (hub/detect/live.py); null for readings stored before a model existed or before this
-- migration. The cold tier gets its array column at the hub's start (hub/cold.py).
alter table metrics add column anomaly_score double precision;

-- Trained detectors, one row per device and version; the newest version of a device is the
-- one the hub scores with. ``state`` is the detector's parameters and state as written by
-- hub/detect/model.py (a numpy .npz archive, read without pickle), ``params`` the same
-- parameters as JSON for people, ``signals`` the names of its input streams in order.
create table detector_models (
    device_id text not null,
    version integer not null,
    kind text not null,
    params jsonb not null,
    signals text[] not null,
    trained_at timestamptz not null,
    history_start timestamptz not null,   -- ts of the first reading it was trained on
    history_end timestamptz not null,     -- ts of the last
    history_rows bigint not null,
    train_cpu_s double precision not null,
    state bytea not null,
    primary key (device_id, version)
);
alter table detector_models enable row level security;

-- The outcome of each device's last training attempt: trained, or why not (too little
-- history), so the API can say it instead of guessing.
create table detector_training (
    device_id text primary key,
    outcome text not null check (outcome in ('trained', 'too_little_history')),
    message text not null,
    history_rows bigint not null,
    attempted_at timestamptz not null
);
alter table detector_training enable row level security;

insert into schema_migrations (version, name) values (7, '0007_anomaly_models.sql')
    on conflict (version) do nothing;
