-- Partition the auth-event table (monitoring_authevent) by day, for installations
-- with tens of millions of events. Read README "Scaling out" first; run with the
-- services stopped (or at least the workers), in one transaction:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -1 -f deploy/postgresql/partition_auth_events.sql
--
-- Uniqueness of a partitioned table must include the partition key, so the
-- primary key becomes (id, ts) and the idempotency key (event_id, ts). Ingest
-- stays idempotent: a redelivered event carries the same event_id AND the same ts
-- (both are set once by the smtpd), so it still hits the unique constraint.

ALTER TABLE monitoring_authevent RENAME TO monitoring_authevent_old;
-- Free the index names (Django's later migrations refer to them) for the new table.
DO $$
DECLARE idx record;
BEGIN
    FOR idx IN SELECT indexname FROM pg_indexes WHERE tablename = 'monitoring_authevent_old' LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.indexname, left(idx.indexname, 50) || '_old');
    END LOOP;
END $$;

CREATE TABLE monitoring_authevent (LIKE monitoring_authevent_old INCLUDING DEFAULTS) PARTITION BY RANGE (ts);
-- Django made id an identity column; PostgreSQL < 17 has no identity on partitioned
-- tables, so ids come from a sequence that continues after the old maximum.
CREATE SEQUENCE monitoring_authevent_part_id_seq OWNED BY monitoring_authevent.id;
SELECT setval('monitoring_authevent_part_id_seq', (SELECT coalesce(max(id), 0) + 1 FROM monitoring_authevent_old), false);
ALTER TABLE monitoring_authevent ALTER COLUMN id SET DEFAULT nextval('monitoring_authevent_part_id_seq');
ALTER TABLE monitoring_authevent ADD PRIMARY KEY (id, ts);
ALTER TABLE monitoring_authevent ADD CONSTRAINT monitoring_authevent_event_id_ts_uniq UNIQUE (event_id, ts);
CREATE INDEX mon_event_ts ON monitoring_authevent (ts);
CREATE INDEX mon_event_user_ts ON monitoring_authevent (username, ts);
CREATE INDEX mon_event_ip_ts ON monitoring_authevent (client_ip, ts);
CREATE INDEX mon_event_prefix_ts ON monitoring_authevent (prefix, ts);
CREATE INDEX mon_event_domain_ts ON monitoring_authevent (domain_name, ts);

-- Creates one partition per day from today - keep_days (only where rows may still be
-- inserted late) to today + ahead_days, and drops partitions entirely older than
-- keep_days. Called daily by deploy/systemd/mailadmin-partitions.timer.
CREATE OR REPLACE FUNCTION mailadmin_event_partitions(keep_days integer, ahead_days integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    day date;
    part record;
BEGIN
    FOR day IN SELECT generate_series(current_date - 1, current_date + ahead_days, interval '1 day')::date LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF monitoring_authevent FOR VALUES FROM (%L) TO (%L)',
            'monitoring_authevent_' || to_char(day, 'YYYYMMDD'), day::timestamptz, (day + 1)::timestamptz);
    END LOOP;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'monitoring_authevent'::regclass
          AND c.relname ~ '^monitoring_authevent_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < current_date - keep_days
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
    END LOOP;
END $$;

-- Rows older than yesterday go to one partition for the history (dropped by hand,
-- or kept until it ages out: DROP TABLE monitoring_authevent_history), then daily ones.
DO $$
BEGIN
    EXECUTE format('CREATE TABLE monitoring_authevent_history PARTITION OF monitoring_authevent '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', (current_date - 1)::timestamptz);
END $$;
SELECT mailadmin_event_partitions(100000, 7);
INSERT INTO monitoring_authevent SELECT * FROM monitoring_authevent_old;
DROP TABLE monitoring_authevent_old;
