-- Minimal privileges for the role pgbackfill connects as.
--
-- Run once as a superuser (or a role with CREATEROLE that owns the tables), connected to the
-- application's database:   psql -d app -v ON_ERROR_STOP=1 -f deploy/sql/grants.sql
-- then set a password with `\password pgbackfill` (never in a file) and put the URL in the
-- Secret the manifests mount (README, "Deploying on Kubernetes").
-- Replace public.orders / fulfillment_channel with your jobs' tables and `set` columns.
-- tests/deploy.rs runs this file as it is and backfills with the role it creates.

CREATE ROLE pgbackfill LOGIN;

-- Replication lag (pg_stat_replication), replication slots and the oldest open transaction.
-- Without it lag cannot be read and every job stays throttled: the throttle fails closed.
GRANT pg_monitor TO pgbackfill;

-- The progress schema (`pgbackfill` by default, --schema to change it) is created and upgraded by
-- the daemon, which needs CREATE on the database for it.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO pgbackfill', current_database());
END
$$;

-- Per job: SELECT on its table (the key walk and `where` read it), UPDATE on the columns it sets.
GRANT USAGE ON SCHEMA public TO pgbackfill;
GRANT SELECT ON public.orders TO pgbackfill;
GRANT UPDATE (fulfillment_channel) ON public.orders TO pgbackfill;
