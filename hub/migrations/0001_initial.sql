-- fleetpulse schema 1: per-second readings, quarantine, devices.
-- The metrics columns mirror shared/schema.py (tests/unit/shared/test_schema.py checks it).
--
-- Every migration ends by recording its own version in schema_migrations, so the hub
-- (hub/store.py Store.migrate) knows what is applied whoever applied it: the hub itself, or
-- the Supabase CLI (`supabase db push` runs each file of supabase/migrations/, a byte-for-byte
-- copy of this directory, in one transaction). tests/unit/hub/test_supabase_migrations.py
-- checks both rules.

-- The hub creates this table before it runs any migration; the CLI does not.
create table if not exists schema_migrations (
    version integer primary key,
    name text not null,
    applied_at timestamptz not null default now()
);
alter table schema_migrations enable row level security;

create table metrics (
    device_id text not null,
    session_id text not null,
    seq bigint not null,
    ts timestamptz not null,
    interval_s double precision not null,
    received_at timestamptz not null,
    cpu_percent double precision,
    cpu_per_core_percent double precision[] not null,
    cpu_freq_current_mhz double precision,
    cpu_freq_min_mhz double precision,
    cpu_freq_max_mhz double precision,
    cpu_ctx_switches bigint,
    cpu_ctx_switches_per_s double precision,
    cpu_interrupts bigint,
    cpu_interrupts_per_s double precision,
    cpu_soft_interrupts bigint,
    cpu_soft_interrupts_per_s double precision,
    cpu_syscalls bigint,
    cpu_syscalls_per_s double precision,
    cpu_load_1 double precision,
    cpu_load_5 double precision,
    cpu_load_15 double precision,
    memory_total_bytes bigint,
    memory_available_bytes bigint,
    memory_used_bytes bigint,
    memory_free_bytes bigint,
    memory_percent double precision,
    memory_swap_total_bytes bigint,
    memory_swap_used_bytes bigint,
    memory_swap_free_bytes bigint,
    memory_swap_percent double precision,
    memory_swap_in_bytes bigint,
    memory_swap_in_bytes_per_s double precision,
    memory_swap_out_bytes bigint,
    memory_swap_out_bytes_per_s double precision,
    disk_read_count bigint,
    disk_read_count_per_s double precision,
    disk_write_count bigint,
    disk_write_count_per_s double precision,
    disk_read_bytes bigint,
    disk_read_bytes_per_s double precision,
    disk_write_bytes bigint,
    disk_write_bytes_per_s double precision,
    disk_partitions jsonb not null,
    disk_per_disk jsonb not null,
    network_bytes_sent bigint,
    network_bytes_sent_per_s double precision,
    network_bytes_recv bigint,
    network_bytes_recv_per_s double precision,
    network_packets_sent bigint,
    network_packets_sent_per_s double precision,
    network_packets_recv bigint,
    network_packets_recv_per_s double precision,
    network_errors_in bigint,
    network_errors_in_per_s double precision,
    network_errors_out bigint,
    network_errors_out_per_s double precision,
    network_drops_in bigint,
    network_drops_in_per_s double precision,
    network_drops_out bigint,
    network_drops_out_per_s double precision,
    network_per_interface jsonb not null,
    sensors_cpu_celsius double precision,
    sensors_gpu_celsius double precision,
    sensors_temperatures jsonb not null,
    sensors_battery_percent double precision,
    sensors_battery_charging boolean,
    sensors_battery_s_left double precision,
    throttling_raw bigint,
    throttling_under_voltage_now boolean,
    throttling_freq_capped_now boolean,
    throttling_throttled_now boolean,
    throttling_soft_temp_limit_now boolean,
    throttling_under_voltage_occurred boolean,
    throttling_freq_capped_occurred boolean,
    throttling_throttled_occurred boolean,
    throttling_soft_temp_limit_occurred boolean,
    -- A redelivered message has the same key: inserting it again is a no-op.
    primary key (device_id, ts, session_id, seq)
) partition by range (ts);
-- Daily partitions are created by the hub ahead of the data (hub/store.py).

create table quarantine (
    id bigint generated always as identity primary key,
    received_at timestamptz not null,
    topic text not null,
    device_id text,
    reason text not null,
    payload bytea not null,          -- truncated to the hub's quarantine_payload_bytes
    payload_bytes integer not null,  -- the size that arrived
    payload_sha256 bytea not null,
    -- A redelivered bad message is recorded once.
    unique (topic, payload_sha256)
);
create index quarantine_received_at on quarantine (received_at);

create table devices (
    device_id text primary key,
    first_seen timestamptz not null,
    last_seen timestamptz,            -- ts of the newest stored reading
    last_received_at timestamptz,     -- when the hub last heard anything from it
    status text not null default 'unknown' check (status in ('online', 'offline', 'unknown')),
    status_since timestamptz,
    hostname text,
    meta jsonb
);

-- The fields of the seed format, derived from the stored columns.
create view metrics_seed with (security_invoker = true) as
select device_id, ts,
       cpu_percent as cpu_load,
       sensors_cpu_celsius as cpu_temp,
       memory_percent as ram_usage_percent,
       disk_read_bytes / 1048576.0::float8 as disk_read_mb,
       disk_write_bytes / 1048576.0::float8 as disk_write_mb,
       network_bytes_sent / 1048576.0::float8 as net_sent_mb,
       network_bytes_recv / 1048576.0::float8 as net_recv_mb,
       (throttling_throttled_now or throttling_freq_capped_now or throttling_soft_temp_limit_now)
           as is_throttling,
       (not sensors_battery_charging) as on_battery
from metrics;

-- Supabase exposes the public schema through its API roles: nothing is readable or
-- writable for them unless a policy says so. The hub owns the tables and is not affected.
alter table metrics enable row level security;
alter table quarantine enable row level security;
alter table devices enable row level security;

insert into schema_migrations (version, name) values (1, '0001_initial.sql')
    on conflict (version) do nothing;
