-- The whole of Assay's database schema, and the only place DDL lives.
--
-- `assay migrate` runs this file inside one transaction under an advisory
-- lock, so it must stay safe to apply to an empty database and to one that is
-- already up to date. The version below is what `serve` and `worker` require;
-- raise it whenever this file changes.
--
-- assay-schema-version: 7

CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS test_sets (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (length(btrim(name)) > 0),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT test_sets_name_unique UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS categories (
    id          bigserial PRIMARY KEY,
    test_set_id bigint NOT NULL REFERENCES test_sets (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(btrim(name)) > 0),
    description text,
    CONSTRAINT categories_name_unique UNIQUE (test_set_id, name)
);

-- position keeps the order the cases were given in; pages and evaluation runs
-- walk a test set by it.
CREATE TABLE IF NOT EXISTS test_cases (
    id              bigserial PRIMARY KEY,
    test_set_id     bigint NOT NULL REFERENCES test_sets (id) ON DELETE CASCADE,
    category_id     bigint REFERENCES categories (id) ON DELETE CASCADE,
    position        integer NOT NULL CHECK (position >= 0),
    input           jsonb NOT NULL CHECK (jsonb_typeof(input) = 'object'),
    expected_output text,
    metadata        jsonb,
    CONSTRAINT test_cases_position_unique UNIQUE (test_set_id, position)
);
CREATE INDEX IF NOT EXISTS test_cases_category_idx
    ON test_cases (category_id, position);

-- The counters are kept by the worker in the same transaction that stores a
-- result, so they always agree with evaluation_results. last_sequence is the
-- sequence of the newest progress event and is bumped under the row lock,
-- which is what keeps sequences gap-free and in commit order.
CREATE TABLE IF NOT EXISTS evaluations (
    id              bigserial PRIMARY KEY,
    test_set_id     bigint NOT NULL REFERENCES test_sets (id) ON DELETE CASCADE,
    name            text,
    status          text NOT NULL DEFAULT 'QUEUED' CHECK (status IN
                        ('QUEUED', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED')),
    model           text NOT NULL CHECK (length(btrim(model)) > 0),
    prompt_template text NOT NULL,
    system_prompt   text,
    temperature     double precision,
    max_tokens      integer CHECK (max_tokens > 0),
    scorer_type     text NOT NULL CHECK (scorer_type IN
                        ('EXACT_MATCH', 'CONTAINS', 'REGEX', 'NUMERIC')),
    scorer_options  jsonb NOT NULL DEFAULT '{}'::jsonb,
    concurrency     integer NOT NULL CHECK (concurrency > 0),
    total_cases     integer NOT NULL CHECK (total_cases >= 0),
    completed_cases integer NOT NULL DEFAULT 0 CHECK (completed_cases >= 0),
    failed_cases    integer NOT NULL DEFAULT 0 CHECK (failed_cases >= 0),
    scored_cases    integer NOT NULL DEFAULT 0 CHECK (scored_cases >= 0),
    passed_cases    integer NOT NULL DEFAULT 0 CHECK (passed_cases >= 0),
    score_sum       double precision NOT NULL DEFAULT 0 CHECK (score_sum >= 0),
    last_sequence   integer NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    attempt         integer NOT NULL DEFAULT 1 CHECK (attempt > 0),
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    CHECK (completed_cases <= total_cases),
    CHECK (failed_cases + scored_cases = completed_cases),
    CHECK (passed_cases <= scored_cases)
);
CREATE INDEX IF NOT EXISTS evaluations_test_set_idx
    ON evaluations (test_set_id, id DESC);
CREATE INDEX IF NOT EXISTS evaluations_status_idx
    ON evaluations (status, id DESC);

-- One result per (evaluation, test case): a worker that runs a case again
-- after a crash cannot store it twice.
CREATE TABLE IF NOT EXISTS evaluation_results (
    id                bigserial PRIMARY KEY,
    evaluation_id     bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    test_case_id      bigint NOT NULL REFERENCES test_cases (id) ON DELETE CASCADE,
    -- The test case's position, copied so result pages walk an index.
    position          integer NOT NULL CHECK (position >= 0),
    output            text,
    score             double precision CHECK (score >= 0 AND score <= 1),
    passed            boolean,
    error             text,
    latency_ms        integer CHECK (latency_ms >= 0),
    prompt_tokens     integer CHECK (prompt_tokens >= 0),
    completion_tokens integer CHECK (completion_tokens >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT evaluation_results_case_unique UNIQUE (evaluation_id, test_case_id),
    -- A result is either scored or failed, never both and never neither.
    CHECK ((error IS NULL) = (score IS NOT NULL AND passed IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS evaluation_results_position_idx
    ON evaluation_results (evaluation_id, position);
-- Deleting a test set cascades through these; without indexes each deleted
-- case or result would scan the whole table.
CREATE INDEX IF NOT EXISTS evaluation_results_test_case_idx
    ON evaluation_results (test_case_id);

-- Every progress event that was announced, so that a subscriber who comes
-- late or reconnects can replay what pub/sub never kept.
CREATE TABLE IF NOT EXISTS progress_events (
    evaluation_id   bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    sequence        integer NOT NULL CHECK (sequence > 0),
    kind            text NOT NULL CONSTRAINT progress_events_kind_check
                        CHECK (kind IN ('STATUS_CHANGED', 'RESULT_ADDED',
                                        'RATE_LIMITED')),
    status          text NOT NULL,
    completed_cases integer NOT NULL CHECK (completed_cases >= 0),
    failed_cases    integer NOT NULL CHECK (failed_cases >= 0),
    score           double precision,
    -- NULL on a RESULT_ADDED event whose result a re-run has since replaced.
    result_id       bigint CONSTRAINT progress_events_result_id_fkey
                        REFERENCES evaluation_results (id) ON DELETE SET NULL,
    -- RATE_LIMITED: how long the run holds off before calling the model again.
    wait_seconds    double precision CHECK (wait_seconds >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (evaluation_id, sequence),
    CONSTRAINT progress_events_result_check
        CHECK (kind = 'RESULT_ADDED' OR result_id IS NULL)
);

CREATE INDEX IF NOT EXISTS progress_events_result_idx
    ON progress_events (result_id);

-- Version 3: runs announce when they hold off on a rate limit.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM schema_version WHERE version >= 3) THEN
        ALTER TABLE progress_events
            ADD COLUMN IF NOT EXISTS wait_seconds double precision
                CHECK (wait_seconds >= 0);
        ALTER TABLE progress_events DROP CONSTRAINT IF EXISTS progress_events_kind_check;
        -- Rows already there passed a stricter check: no need to scan them.
        ALTER TABLE progress_events ADD CONSTRAINT progress_events_kind_check
            CHECK (kind IN ('STATUS_CHANGED', 'RESULT_ADDED', 'RATE_LIMITED'))
            NOT VALID;
    END IF;
END
$$;

-- A client that retries a create sends the same idempotency key; the key
-- remembers what it created (and a digest of the request, so the same key
-- with a different request is refused). A request claims its key before it
-- creates anything and fills in what it created in the same transaction, so
-- a committed row always names its object. Keys go with what they created,
-- and expired ones are deleted by the workers' recovery sweep.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    operation      text NOT NULL CHECK (operation IN ('createTestSet',
                                                      'createEvaluation')),
    key            text NOT NULL,
    request_digest text NOT NULL,
    test_set_id    bigint REFERENCES test_sets (id) ON DELETE CASCADE,
    evaluation_id  bigint REFERENCES evaluations (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key),
    CHECK (test_set_id IS NULL OR evaluation_id IS NULL)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx
    ON idempotency_keys (created_at);
CREATE INDEX IF NOT EXISTS idempotency_keys_test_set_idx
    ON idempotency_keys (test_set_id);
CREATE INDEX IF NOT EXISTS idempotency_keys_evaluation_idx
    ON idempotency_keys (evaluation_id);

INSERT INTO schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;

-- Version 4: evaluations remember the queue (Redis prefix) they belong to, so
-- a deployment's recovery sweep takes over only its own runs; a re-run may
-- replace failed results, whose events then stay with no result.
ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS queue_prefix text;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM schema_version WHERE version >= 4) THEN
        ALTER TABLE progress_events
            DROP CONSTRAINT IF EXISTS progress_events_result_id_fkey;
        ALTER TABLE progress_events ADD CONSTRAINT progress_events_result_id_fkey
            FOREIGN KEY (result_id) REFERENCES evaluation_results (id)
            ON DELETE SET NULL NOT VALID;
        ALTER TABLE progress_events DROP CONSTRAINT IF EXISTS progress_events_check;
        ALTER TABLE progress_events
            DROP CONSTRAINT IF EXISTS progress_events_result_check;
        ALTER TABLE progress_events ADD CONSTRAINT progress_events_result_check
            CHECK (kind = 'RESULT_ADDED' OR result_id IS NULL) NOT VALID;
    END IF;
END
$$;

-- A first cut of version 3 required exactly one of test_set_id and
-- evaluation_id, which the claim-then-create order cannot meet.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint
               WHERE conname = 'idempotency_keys_check'
                 AND pg_get_constraintdef(oid) LIKE '%<>%') THEN
        ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_check;
        ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_check
            CHECK (test_set_id IS NULL OR evaluation_id IS NULL);
    END IF;
END
$$;

INSERT INTO schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;

-- Version 5: workspaces and the API keys that act in them. A key is shown
-- once, when it is made; only a SHA-256 digest of it is kept (a key is 256
-- random bits, so a plain digest cannot be reversed by guessing), with its
-- first characters so that an operator can tell keys apart.
CREATE TABLE IF NOT EXISTS workspaces (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL CHECK (length(btrim(name)) > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workspaces_name_unique UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS api_keys (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text,
    role         text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    key_digest   text NOT NULL,
    key_start    text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_digest_unique UNIQUE (key_digest)
);
CREATE INDEX IF NOT EXISTS api_keys_workspace_idx ON api_keys (workspace_id, id);

INSERT INTO schema_version (version) VALUES (5) ON CONFLICT DO NOTHING;

-- Version 6: every test set and evaluation belongs to a workspace (results,
-- cases and events belong through them), and idempotency keys are one
-- workspace's own. Rows made before workspaces existed go to the workspace
-- "default", which is also where requests act when authentication is off.
-- An evaluation's workspace is its test set's: the composite foreign key
-- makes anything else impossible, whatever the code does.
INSERT INTO workspaces (name) VALUES ('default') ON CONFLICT (name) DO NOTHING;
DO $$
DECLARE
    fallback bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM schema_version WHERE version >= 6) THEN
        SELECT id INTO fallback FROM workspaces WHERE name = 'default';

        ALTER TABLE test_sets ADD COLUMN IF NOT EXISTS workspace_id bigint
            REFERENCES workspaces (id);
        UPDATE test_sets SET workspace_id = fallback WHERE workspace_id IS NULL;
        ALTER TABLE test_sets ALTER COLUMN workspace_id SET NOT NULL;
        ALTER TABLE test_sets DROP CONSTRAINT IF EXISTS test_sets_name_unique;
        ALTER TABLE test_sets ADD CONSTRAINT test_sets_name_unique
            UNIQUE (workspace_id, name);
        ALTER TABLE test_sets ADD CONSTRAINT test_sets_workspace_unique
            UNIQUE (id, workspace_id);

        ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS workspace_id bigint;
        UPDATE evaluations ev SET workspace_id = ts.workspace_id
            FROM test_sets ts WHERE ts.id = ev.test_set_id
              AND ev.workspace_id IS NULL;
        ALTER TABLE evaluations ALTER COLUMN workspace_id SET NOT NULL;
        ALTER TABLE evaluations ADD CONSTRAINT evaluations_workspace_fkey
            FOREIGN KEY (test_set_id, workspace_id)
            REFERENCES test_sets (id, workspace_id) ON DELETE CASCADE;

        ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS workspace_id bigint
            REFERENCES workspaces (id) ON DELETE CASCADE;
        UPDATE idempotency_keys SET workspace_id = fallback
            WHERE workspace_id IS NULL;
        ALTER TABLE idempotency_keys ALTER COLUMN workspace_id SET NOT NULL;
        ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_pkey;
        ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey
            PRIMARY KEY (workspace_id, operation, key);
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS test_sets_workspace_idx
    ON test_sets (workspace_id, id DESC);
CREATE INDEX IF NOT EXISTS evaluations_workspace_idx
    ON evaluations (workspace_id, id DESC);
CREATE INDEX IF NOT EXISTS evaluations_workspace_status_idx
    ON evaluations (workspace_id, status, id DESC);

INSERT INTO schema_version (version) VALUES (6) ON CONFLICT DO NOTHING;

-- Version 7: an evaluation remembers how its first lead cut it into parts,
-- so that every runner of every attempt cuts it the same way, whatever its
-- own settings (parts cut differently would overlap, and their cases be
-- sent to the model twice).
-- Guarded: ALTER TABLE locks the whole table even when there is nothing to
-- add, and workers are busy with it while an API starts.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM schema_version WHERE version >= 7) THEN
        ALTER TABLE evaluations ADD COLUMN IF NOT EXISTS part_cases integer
            CHECK (part_cases > 0);
    END IF;
END
$$;

INSERT INTO schema_version (version) VALUES (7) ON CONFLICT DO NOTHING;
