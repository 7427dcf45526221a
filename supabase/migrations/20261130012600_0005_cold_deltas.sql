-- fleetpulse schema 5: cold blocks keep counters and timestamps as differences (hub/cold.py).
-- A block written from now on stores each reading's ts and received_at as microseconds since
-- the block's hour (ts__us, received_at__us) and lists in ``delta`` the array columns it
-- holds as differences from the element before (a running sum gives the values back);
-- blocks written before (schema 4) have ``delta`` null and keep ts/received_at as
-- timestamptz[]: the readers (metrics_cold_rows, metrics_history, metrics_all) read both.
-- A record's decimal number (a rate, a percentage, a temperature) is kept as an integer,
-- 4 * (value * 1000) + (3 - its scale), in <field>__k when every one of the block fits.

alter table metrics_cold add column if not exists delta text[];
alter table metrics_cold add column if not exists ts__us bigint[];
alter table metrics_cold add column if not exists received_at__us bigint[];
alter table metrics_cold add column if not exists disk_partitions__percent__k bigint[];
alter table metrics_cold add column if not exists disk_per_disk__read_count_per_s__k bigint[];
alter table metrics_cold add column if not exists disk_per_disk__write_count_per_s__k bigint[];
alter table metrics_cold add column if not exists disk_per_disk__read_bytes_per_s__k bigint[];
alter table metrics_cold add column if not exists disk_per_disk__write_bytes_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__bytes_sent_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__bytes_recv_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__packets_sent_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__packets_recv_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__errors_in_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__errors_out_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__drops_in_per_s__k bigint[];
alter table metrics_cold add column if not exists network_per_interface__drops_out_per_s__k bigint[];
alter table metrics_cold add column if not exists sensors_temperatures__celsius__k bigint[];

-- The running sum that decodes a delta-coded array, in bigint (sum(bigint) would give
-- numeric, converted back per element). int8pl is strict: nulls are skipped, and the
-- first value starts the sum.
create or replace aggregate metrics_cold_sum(bigint) (sfunc = int8pl, stype = bigint);

insert into schema_migrations (version, name) values (5, '0005_cold_deltas.sql')
    on conflict (version) do nothing;
