-- The second database of the compose deployment (docker-compose.yaml): pseudozone's whole
-- state on PostgreSQL (PSEUDOZONE_STATE_DB_URL, docs/adr/0018-state-database.md: the key
-- vault, batch ledger, request ledger, audit log and the rest), apart from Airflow's
-- metadata database (POSTGRES_DB, owned by POSTGRES_USER). pseudozone makes its tables there
-- when it first connects.
--
-- The postgres image runs this file once, when its data volume is empty, with psql as the
-- superuser. The role's password comes from the container's environment
-- (PSEUDOZONE_DB_PASSWORD, from .env), never from this file; psql 15+ reads it with \getenv.
\set ON_ERROR_STOP on
\getenv pseudozone_password PSEUDOZONE_DB_PASSWORD
\if :{?pseudozone_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'PSEUDOZONE_DB_PASSWORD is not set'; END $$;
\endif

CREATE ROLE pseudozone LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'pseudozone_password';
CREATE DATABASE pseudozone OWNER pseudozone;
-- each database for its own role: pseudozone may not connect to Airflow's, nor anyone
-- but its owner (and the superuser) to pseudozone's
REVOKE ALL ON DATABASE pseudozone FROM PUBLIC;
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
