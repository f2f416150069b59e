-- Minimal privileges for the role pgbackfill connects as, when the progress schema is created
-- by another role: the daemon then needs no CREATE privilege anywhere.
-- (grants.sql: the daemon creates the schema itself on its first start.)
--
-- As the role that is to own the progress schema (a migration role, or a superuser), first
-- create it, then run this file as that same role, connected to the application's database:
--   DATABASE_URL=postgres://owner@db-primary:5432/app pgbackfill migrate
--   psql -d app -U owner -v ON_ERROR_STOP=1 -f deploy/sql/grants-precreated-schema.sql
-- Before upgrading the daemons to a version with new progress tables, run `pgbackfill migrate`
-- again as the owner (the default privileges below cover the new tables).
-- Replace public.orders / fulfillment_channel with your jobs' tables and `set` columns, and
-- `pgbackfill` in the schema lines if you run the daemons with --schema.
-- tests/deploy.rs runs this file as it is and backfills with the role it creates.

DO $$
BEGIN
    CREATE ROLE pgbackfill LOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    RAISE NOTICE 'role pgbackfill exists';
END
$$;

-- Replication lag (pg_stat_replication), replication slots and the oldest open transaction.
-- Without it lag cannot be read and every job stays throttled: the throttle fails closed.
GRANT pg_monitor TO pgbackfill;

-- The progress tables: job state, key ranges and cursors, claims, refusals. Rows only, no DDL.
GRANT USAGE ON SCHEMA pgbackfill TO pgbackfill;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgbackfill TO pgbackfill;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA pgbackfill TO pgbackfill;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgbackfill GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pgbackfill;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgbackfill GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO pgbackfill;

-- Per job: SELECT on its table (the key walk and `where` read it), UPDATE on the columns it sets.
GRANT USAGE ON SCHEMA public TO pgbackfill;
GRANT SELECT ON public.orders TO pgbackfill;
GRANT UPDATE (fulfillment_channel) ON public.orders TO pgbackfill;
