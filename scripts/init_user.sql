-- lang-agent: least-privilege roles on an external PostgreSQL (run once as a superuser).
--
--   psql "$ADMIN_DSN" -v agent_password='…' -v viewer_password='…' -f scripts/init_user.sql
--
-- lang_agent        owns the schema: the server creates and migrates its tables at start-up.
-- lang_agent_viewer reads only: the conversation viewer connects with it and cannot write.
-- Then: CONN_STR=postgresql://lang_agent:…@HOST/lang_agent
--       VIEWER_CONN_STR=postgresql://lang_agent_viewer:…@HOST/lang_agent

CREATE ROLE lang_agent LOGIN PASSWORD :'agent_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE lang_agent_viewer LOGIN PASSWORD :'viewer_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE lang_agent OWNER lang_agent;

\connect lang_agent
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO lang_agent;
GRANT USAGE ON SCHEMA public TO lang_agent_viewer;
-- Tables the agent creates later are readable, never writable, by the viewer.
ALTER DEFAULT PRIVILEGES FOR ROLE lang_agent IN SCHEMA public
    GRANT SELECT ON TABLES TO lang_agent_viewer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lang_agent_viewer;
ALTER ROLE lang_agent_viewer SET default_transaction_read_only = on;
