-- Minimal privileges for the role pgbackfill connects as, when the daemon creates its own
-- progress schema (`pgbackfill` by default, --schema to change it) on its first start.
-- (grants-precreated-schema.sql: the schema is created by another role instead.)
--
-- Run as a superuser (or a role with CREATEROLE that owns the tables), connected to the
-- application's database:   psql -d app -v ON_ERROR_STOP=1 -f deploy/sql/grants.sql
-- then set a password with `\password pgbackfill` (never in a file) and put the URL in the
-- Secret the manifests mount (README, "Deploying on Kubernetes"). Safe to run again, e.g. after
-- adding the grants of a new job.
-- Replace public.orders / fulfillment_channel with your jobs' tables and `set` columns.
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

-- The progress schema, created (and owned) by the daemon on its first start. Only that start
-- needs CREATE on the database: a daemon finding the schema up to date runs no DDL, so this may
-- be revoked afterwards (REVOKE CREATE ON DATABASE … FROM pgbackfill) until an upgrade brings a
-- schema migration.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO pgbackfill', current_database());
END
$$;

-- Per job: SELECT on its table (the key walk and `where` read it), UPDATE on the columns it sets.
GRANT USAGE ON SCHEMA public TO pgbackfill;
GRANT SELECT ON public.orders TO pgbackfill;
GRANT UPDATE (fulfillment_channel) ON public.orders TO pgbackfill;
