-- fleetpulse schema 5: cold blocks keep counters and timestamps as differences (hub/cold.py).
-- A block written from now on stores each reading's ts and received_at as microseconds since
-- the block's hour (ts__us, received_at__us) and lists in ``delta`` the array columns it
-- holds as differences from the element before (a running sum gives the values back);
-- blocks written before (schema 4) have ``delta`` null and keep ts/received_at as
-- timestamptz[]: the readers (metrics_cold_rows, metrics_history, metrics_all) read both.

alter table metrics_cold add column if not exists delta text[];
alter table metrics_cold add column if not exists ts__us bigint[];
alter table metrics_cold add column if not exists received_at__us bigint[];

-- The running sum that decodes a delta-coded array, in bigint (sum(bigint) would give
-- numeric, converted back per element). int8pl is strict: nulls are skipped, and the
-- first value starts the sum.
create or replace aggregate metrics_cold_sum(bigint) (sfunc = int8pl, stype = bigint);

insert into schema_migrations (version, name) values (5, '0005_cold_deltas.sql')
    on conflict (version) do nothing;
