-- lang-agent schema: generated from lang_agent/db.py MIGRATIONS by
-- `lang-agent schema > scripts/recreate_table.sql`. Idempotent: safe to run again.
-- The server applies the same statements at start-up; where its role may not create
-- tables, the owner runs `lang-agent schema --apply`, which also makes LangGraph's.
BEGIN;
CREATE TABLE IF NOT EXISTS lang_agent_migrations (
    v integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
-- version 0
CREATE TABLE IF NOT EXISTS turns (
        turn_id uuid PRIMARY KEY,
        thread_id text,
        front_end text NOT NULL,
        profile text,
        route text,
        status text NOT NULL,
        error_code text,
        error text,
        started_at timestamptz NOT NULL,
        ttft_ms double precision,
        latency_ms double precision,
        prompt_tokens integer NOT NULL DEFAULT 0,
        completion_tokens integer NOT NULL DEFAULT 0,
        models jsonb NOT NULL DEFAULT '[]',
        metadata jsonb NOT NULL DEFAULT '{}'
    );
INSERT INTO lang_agent_migrations (v) VALUES (0) ON CONFLICT DO NOTHING;
-- version 1
CREATE INDEX IF NOT EXISTS turns_thread_started ON turns (thread_id, started_at);
INSERT INTO lang_agent_migrations (v) VALUES (1) ON CONFLICT DO NOTHING;
-- version 2
CREATE INDEX IF NOT EXISTS turns_started ON turns (started_at);
INSERT INTO lang_agent_migrations (v) VALUES (2) ON CONFLICT DO NOTHING;
-- version 3
CREATE TABLE IF NOT EXISTS messages (
        id bigserial PRIMARY KEY,
        thread_id text,
        turn_id uuid NOT NULL,
        seq integer NOT NULL,
        role text NOT NULL,
        content text NOT NULL DEFAULT '',
        tool_calls jsonb,
        tool_call_id text,
        tool_name text,
        is_filler boolean NOT NULL DEFAULT false,
        model text,
        turn_started_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (turn_id, seq)
    );
INSERT INTO lang_agent_migrations (v) VALUES (3) ON CONFLICT DO NOTHING;
-- version 4
CREATE INDEX IF NOT EXISTS messages_thread_order ON messages (thread_id, turn_started_at, seq);
INSERT INTO lang_agent_migrations (v) VALUES (4) ON CONFLICT DO NOTHING;
-- version 5
CREATE INDEX IF NOT EXISTS messages_created ON messages (created_at);
INSERT INTO lang_agent_migrations (v) VALUES (5) ON CONFLICT DO NOTHING;
-- version 6
CREATE TABLE IF NOT EXISTS thread_leases (
        thread_id text PRIMARY KEY,
        owner text NOT NULL,
        expires_at timestamptz NOT NULL
    );
INSERT INTO lang_agent_migrations (v) VALUES (6) ON CONFLICT DO NOTHING;
-- version 7
CREATE TABLE IF NOT EXISTS llm_calls (
        id bigserial PRIMARY KEY,
        call_id uuid NOT NULL UNIQUE,
        source text NOT NULL DEFAULT 'agent',
        thread_id text,
        turn_id text,
        node text,
        method text NOT NULL,
        url text NOT NULL,
        model text,
        stream boolean NOT NULL DEFAULT false,
        status text NOT NULL,
        status_code integer,
        error text,
        request_header jsonb,
        request_body jsonb,
        client_request_body jsonb,
        response_header jsonb,
        response_body jsonb,
        response_sse text,
        event_offsets_ms double precision[],
        client_request_id text,
        upstream_request_id text,
        chatcmpl_id text,
        server_timing_ms double precision,
        created_at timestamptz NOT NULL,
        finished_at timestamptz,
        ttfb_ms double precision,
        ttft_ms double precision,
        ttft_reasoning_ms double precision,
        latency_ms double precision,
        tpot_ms double precision,
        prompt_tokens integer,
        completion_tokens integer,
        cached_tokens integer,
        reasoning_tokens integer,
        total_tokens integer,
        cost double precision,
        finish_reason text,
        flags jsonb NOT NULL DEFAULT '{}',
        category text,
        tags text[] NOT NULL DEFAULT '{}'
    );
INSERT INTO lang_agent_migrations (v) VALUES (7) ON CONFLICT DO NOTHING;
-- version 8
CREATE INDEX IF NOT EXISTS llm_calls_created ON llm_calls (created_at);
INSERT INTO lang_agent_migrations (v) VALUES (8) ON CONFLICT DO NOTHING;
-- version 9
CREATE INDEX IF NOT EXISTS llm_calls_thread ON llm_calls (thread_id, created_at);
INSERT INTO lang_agent_migrations (v) VALUES (9) ON CONFLICT DO NOTHING;
-- version 10
CREATE INDEX IF NOT EXISTS llm_calls_turn ON llm_calls (turn_id);
INSERT INTO lang_agent_migrations (v) VALUES (10) ON CONFLICT DO NOTHING;
-- version 11
CREATE INDEX IF NOT EXISTS llm_calls_upstream_request ON llm_calls (upstream_request_id);
INSERT INTO lang_agent_migrations (v) VALUES (11) ON CONFLICT DO NOTHING;
-- version 12
CREATE INDEX IF NOT EXISTS llm_calls_chatcmpl ON llm_calls (chatcmpl_id);
INSERT INTO lang_agent_migrations (v) VALUES (12) ON CONFLICT DO NOTHING;
-- version 13
CREATE INDEX IF NOT EXISTS llm_calls_status ON llm_calls (status, created_at);
INSERT INTO lang_agent_migrations (v) VALUES (13) ON CONFLICT DO NOTHING;
-- version 14
CREATE INDEX IF NOT EXISTS turns_thread_latest ON turns (started_at DESC, thread_id DESC) WHERE thread_id IS NOT NULL;
INSERT INTO lang_agent_migrations (v) VALUES (14) ON CONFLICT DO NOTHING;
-- version 15
DO $$
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm unavailable: viewer search scans messages';
    END
    $$;
INSERT INTO lang_agent_migrations (v) VALUES (15) ON CONFLICT DO NOTHING;
-- version 16
DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
            CREATE INDEX IF NOT EXISTS messages_content_trgm
                ON messages USING gin (content gin_trgm_ops);
        END IF;
    END
    $$;
INSERT INTO lang_agent_migrations (v) VALUES (16) ON CONFLICT DO NOTHING;
-- version 17
ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS conversation_key text;
INSERT INTO lang_agent_migrations (v) VALUES (17) ON CONFLICT DO NOTHING;
-- version 18
CREATE INDEX IF NOT EXISTS llm_calls_conversation ON llm_calls (conversation_key, created_at) WHERE conversation_key IS NOT NULL;
INSERT INTO lang_agent_migrations (v) VALUES (18) ON CONFLICT DO NOTHING;
-- version 19
ALTER TABLE messages ADD COLUMN IF NOT EXISTS is_fallback boolean NOT NULL DEFAULT false;
INSERT INTO lang_agent_migrations (v) VALUES (19) ON CONFLICT DO NOTHING;
COMMIT;
