-- fleetpulse schema 2: minute and hour rollups, alerts.
-- The rollup columns mirror hub/rollup.py ROLLUP_COLUMNS (tests/integration/test_rollup.py
-- checks it). Each column keeps sum, count, min and max so that merging is exact; the
-- hub maintains them in the same statement that inserts the per-second rows.

create table metrics_1m (
    device_id text not null,
    bucket timestamptz not null,
    readings bigint not null default 0,
    interval_s_sum double precision,
    interval_s_count bigint,
    interval_s_min double precision,
    interval_s_max double precision,
    cpu_percent_sum double precision,
    cpu_percent_count bigint,
    cpu_percent_min double precision,
    cpu_percent_max double precision,
    cpu_load_1_sum double precision,
    cpu_load_1_count bigint,
    cpu_load_1_min double precision,
    cpu_load_1_max double precision,
    memory_percent_sum double precision,
    memory_percent_count bigint,
    memory_percent_min double precision,
    memory_percent_max double precision,
    memory_swap_percent_sum double precision,
    memory_swap_percent_count bigint,
    memory_swap_percent_min double precision,
    memory_swap_percent_max double precision,
    memory_swap_in_bytes_per_s_sum double precision,
    memory_swap_in_bytes_per_s_count bigint,
    memory_swap_in_bytes_per_s_min double precision,
    memory_swap_in_bytes_per_s_max double precision,
    memory_swap_out_bytes_per_s_sum double precision,
    memory_swap_out_bytes_per_s_count bigint,
    memory_swap_out_bytes_per_s_min double precision,
    memory_swap_out_bytes_per_s_max double precision,
    sensors_cpu_celsius_sum double precision,
    sensors_cpu_celsius_count bigint,
    sensors_cpu_celsius_min double precision,
    sensors_cpu_celsius_max double precision,
    disk_read_bytes_per_s_sum double precision,
    disk_read_bytes_per_s_count bigint,
    disk_read_bytes_per_s_min double precision,
    disk_read_bytes_per_s_max double precision,
    disk_write_bytes_per_s_sum double precision,
    disk_write_bytes_per_s_count bigint,
    disk_write_bytes_per_s_min double precision,
    disk_write_bytes_per_s_max double precision,
    network_bytes_sent_per_s_sum double precision,
    network_bytes_sent_per_s_count bigint,
    network_bytes_sent_per_s_min double precision,
    network_bytes_sent_per_s_max double precision,
    network_bytes_recv_per_s_sum double precision,
    network_bytes_recv_per_s_count bigint,
    network_bytes_recv_per_s_min double precision,
    network_bytes_recv_per_s_max double precision,
    primary key (device_id, bucket)
);

create table metrics_1h (
    device_id text not null,
    bucket timestamptz not null,
    readings bigint not null default 0,
    interval_s_sum double precision,
    interval_s_count bigint,
    interval_s_min double precision,
    interval_s_max double precision,
    cpu_percent_sum double precision,
    cpu_percent_count bigint,
    cpu_percent_min double precision,
    cpu_percent_max double precision,
    cpu_load_1_sum double precision,
    cpu_load_1_count bigint,
    cpu_load_1_min double precision,
    cpu_load_1_max double precision,
    memory_percent_sum double precision,
    memory_percent_count bigint,
    memory_percent_min double precision,
    memory_percent_max double precision,
    memory_swap_percent_sum double precision,
    memory_swap_percent_count bigint,
    memory_swap_percent_min double precision,
    memory_swap_percent_max double precision,
    memory_swap_in_bytes_per_s_sum double precision,
    memory_swap_in_bytes_per_s_count bigint,
    memory_swap_in_bytes_per_s_min double precision,
    memory_swap_in_bytes_per_s_max double precision,
    memory_swap_out_bytes_per_s_sum double precision,
    memory_swap_out_bytes_per_s_count bigint,
    memory_swap_out_bytes_per_s_min double precision,
    memory_swap_out_bytes_per_s_max double precision,
    sensors_cpu_celsius_sum double precision,
    sensors_cpu_celsius_count bigint,
    sensors_cpu_celsius_min double precision,
    sensors_cpu_celsius_max double precision,
    disk_read_bytes_per_s_sum double precision,
    disk_read_bytes_per_s_count bigint,
    disk_read_bytes_per_s_min double precision,
    disk_read_bytes_per_s_max double precision,
    disk_write_bytes_per_s_sum double precision,
    disk_write_bytes_per_s_count bigint,
    disk_write_bytes_per_s_min double precision,
    disk_write_bytes_per_s_max double precision,
    network_bytes_sent_per_s_sum double precision,
    network_bytes_sent_per_s_count bigint,
    network_bytes_sent_per_s_min double precision,
    network_bytes_sent_per_s_max double precision,
    network_bytes_recv_per_s_sum double precision,
    network_bytes_recv_per_s_count bigint,
    network_bytes_recv_per_s_min double precision,
    network_bytes_recv_per_s_max double precision,
    primary key (device_id, bucket)
);

-- Rollups are kept longer than per-second data and deleted by age (hub/retention.py).
create index metrics_1m_bucket on metrics_1m (bucket);
create index metrics_1h_bucket on metrics_1h (bucket);

create table alerts (
    id bigint generated always as identity primary key,
    device_id text not null,
    rule text not null,
    started_at timestamptz not null,
    ended_at timestamptz,              -- null while the alert is open
    peak_value double precision,
    last_value double precision,
    threshold double precision,
    message text not null,
    updated_at timestamptz not null
);
-- At most one open alert per device and rule.
create unique index alerts_open on alerts (device_id, rule) where ended_at is null;
create index alerts_started_at on alerts (started_at);
create index alerts_device on alerts (device_id, started_at);

alter table metrics_1m enable row level security;
alter table metrics_1h enable row level security;
alter table alerts enable row level security;

insert into schema_migrations (version, name) values (2, '0002_rollups_alerts.sql')
    on conflict (version) do nothing;
