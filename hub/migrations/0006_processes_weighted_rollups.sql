-- fleetpulse schema 6: the top processes, and rollup means weighed by time.

-- The top processes (the optional section `processes` of a reading,
-- shared/schema.py ProcessesV1; hub/processes.py builds the rows and reads them back).
-- One row per device per process scan (every process_period_s, default 10 s), keyed as the
-- reading that carried it, so a redelivered reading adds nothing. The processes of both top
-- lists are stored once each (a process busy on CPU and memory is in both), as parallel
-- typed arrays: the first top_cpu_n are the top by CPU, busiest first; top_memory holds
-- the 1-based positions of the top by memory, in order. Percentages are real (float4).
create table processes (
    device_id text not null,
    ts timestamptz not null,
    session_id text not null,
    seq bigint not null,
    received_at timestamptz not null,
    period_s real not null,
    count bigint not null,
    running bigint not null,
    sleeping bigint not null,
    zombie bigint not null,
    other bigint not null,
    top_cpu_n smallint not null,
    top_memory smallint[] not null,
    pid bigint[] not null,
    name text[] not null,
    user_name text[] not null,
    cpu_percent real[] not null,
    rss_bytes bigint[] not null,
    memory_percent real[] not null,
    threads bigint[] not null,
    status text[] not null,
    io_read_bytes bigint[] not null,
    io_write_bytes bigint[] not null,
    primary key (device_id, ts, session_id, seq)
);
alter table processes enable row level security;

-- Rollup means weighed by the seconds each reading covers (hub/rollup.py WEIGHTED_COLUMNS):
-- <column>_wsum = sum(value * interval_s), <column>_wtime = sum(interval_s) of the readings
-- with a value. A device whose interval changes within a minute or hour (1 s, then 0.5 s)
-- would otherwise weigh its faster readings more. Null in rows written before this
-- migration: those count each reading at their row's mean interval, as before.
alter table metrics_1m
    add column cpu_percent_wsum double precision,
    add column cpu_percent_wtime double precision,
    add column cpu_load_1_wsum double precision,
    add column cpu_load_1_wtime double precision,
    add column memory_percent_wsum double precision,
    add column memory_percent_wtime double precision,
    add column memory_swap_percent_wsum double precision,
    add column memory_swap_percent_wtime double precision,
    add column memory_swap_in_bytes_per_s_wsum double precision,
    add column memory_swap_in_bytes_per_s_wtime double precision,
    add column memory_swap_out_bytes_per_s_wsum double precision,
    add column memory_swap_out_bytes_per_s_wtime double precision,
    add column sensors_cpu_celsius_wsum double precision,
    add column sensors_cpu_celsius_wtime double precision,
    add column disk_read_bytes_per_s_wsum double precision,
    add column disk_read_bytes_per_s_wtime double precision,
    add column disk_write_bytes_per_s_wsum double precision,
    add column disk_write_bytes_per_s_wtime double precision,
    add column network_bytes_sent_per_s_wsum double precision,
    add column network_bytes_sent_per_s_wtime double precision,
    add column network_bytes_recv_per_s_wsum double precision,
    add column network_bytes_recv_per_s_wtime double precision;
alter table metrics_1h
    add column cpu_percent_wsum double precision,
    add column cpu_percent_wtime double precision,
    add column cpu_load_1_wsum double precision,
    add column cpu_load_1_wtime double precision,
    add column memory_percent_wsum double precision,
    add column memory_percent_wtime double precision,
    add column memory_swap_percent_wsum double precision,
    add column memory_swap_percent_wtime double precision,
    add column memory_swap_in_bytes_per_s_wsum double precision,
    add column memory_swap_in_bytes_per_s_wtime double precision,
    add column memory_swap_out_bytes_per_s_wsum double precision,
    add column memory_swap_out_bytes_per_s_wtime double precision,
    add column sensors_cpu_celsius_wsum double precision,
    add column sensors_cpu_celsius_wtime double precision,
    add column disk_read_bytes_per_s_wsum double precision,
    add column disk_read_bytes_per_s_wtime double precision,
    add column disk_write_bytes_per_s_wsum double precision,
    add column disk_write_bytes_per_s_wtime double precision,
    add column network_bytes_sent_per_s_wsum double precision,
    add column network_bytes_sent_per_s_wtime double precision,
    add column network_bytes_recv_per_s_wsum double precision,
    add column network_bytes_recv_per_s_wtime double precision;

insert into schema_migrations (version, name) values (6, '0006_processes_weighted_rollups.sql')
    on conflict (version) do nothing;
