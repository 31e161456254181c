-- fasttasks schema for PostgreSQL. The single source of truth: the Django migration runs these
-- statements (through fasttasks._core.schema_statements) and the Rust tests install them the same way.
-- Statements are separated by a line holding only ";" so that both sides can split them without a parser.

CREATE TABLE fasttasks_task (
    id                varchar(64)  NOT NULL PRIMARY KEY,
    task_path         text         NOT NULL,
    queue_name        varchar(255) NOT NULL,
    backend_name      varchar(255) NOT NULL,
    priority          integer      NOT NULL DEFAULT 0
        CONSTRAINT fasttasks_task_priority_range CHECK (priority BETWEEN -100 AND 100),
    status            varchar(10)  NOT NULL DEFAULT 'READY'
        CONSTRAINT fasttasks_task_status_valid CHECK (status IN ('READY', 'RUNNING', 'SUCCESSFUL', 'FAILED')),
    args              jsonb        NOT NULL DEFAULT '[]',
    kwargs            jsonb        NOT NULL DEFAULT '{}',
    -- run_after is what the user asked for (NULL = as soon as possible); available_at is when the
    -- row may next be claimed (run_after, enqueued_at, or a retry's backoff). Claims order and filter on
    -- available_at only, so the ready index needs no NULL handling.
    run_after         timestamptz  NULL,
    available_at      timestamptz  NOT NULL,
    enqueued_at       timestamptz  NOT NULL,
    started_at        timestamptz  NULL,
    last_attempted_at timestamptz  NULL,
    finished_at       timestamptz  NULL,
    attempts          integer      NOT NULL DEFAULT 0,
    max_attempts      integer      NOT NULL DEFAULT 1,
    -- attempts ended because the worker running them died (rescued): counted apart from max_attempts,
    -- so a task that kills its worker (a poison task) ends FAILED after a few crashes.
    crashes           integer      NOT NULL DEFAULT 0,
    -- when fasttasks.cancel() asked a RUNNING task to stop; its worker finds it at its next heartbeat.
    cancel_requested_at timestamptz NULL,
    -- set for tasks declared unique: a digest of the task path and its arguments (or of its unique_key);
    -- while a row is READY or RUNNING no other row of its backend holds the same key.
    unique_key        varchar(64)  NULL,
    worker_ids        jsonb        NOT NULL DEFAULT '[]',
    -- one object per failed attempt: {"exception_class_path", "traceback", "attempt", "worker_id"}
    errors            jsonb        NOT NULL DEFAULT '[]',
    return_value      jsonb        NULL,
    -- the worker holding the current attempt and the fencing token of that claim; completions must
    -- match lease_token, so a worker whose attempt was taken away cannot overwrite the newer one.
    worker_id         varchar(64)  NULL,
    lease_token       bigint       NULL,
    -- A lease exists only while RUNNING: claims set it, completion, release and rescue clear it. The
    -- completion guard matches on the lease alone, so this makes "lease matches" imply "RUNNING".
    CONSTRAINT fasttasks_task_lease_only_while_running CHECK (lease_token IS NULL OR status = 'RUNNING')
)
;
-- Partial: only READY rows are in it, so finished history never slows a claim.
CREATE INDEX fasttasks_task_ready_idx ON fasttasks_task (priority DESC, available_at, id) WHERE status = 'READY'
;
CREATE INDEX fasttasks_task_running_idx ON fasttasks_task (worker_id) WHERE status = 'RUNNING'
;
CREATE INDEX fasttasks_task_finished_idx ON fasttasks_task (finished_at) WHERE status IN ('SUCCESSFUL', 'FAILED')
;
-- Unique tasks: a second enqueue of an active key conflicts here and gets the existing task instead.
CREATE UNIQUE INDEX fasttasks_task_unique_active_idx ON fasttasks_task (backend_name, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('READY', 'RUNNING')
;
-- One row per running worker process: registered at start, its heartbeat_at moved forward by the
-- worker's Rust runtime (not by Python, so a task holding the GIL cannot make it look dead), deleted at
-- a clean exit. RUNNING tasks whose worker_id has no fresh row here belong to a dead worker.
CREATE TABLE fasttasks_worker (
    id           varchar(64)  NOT NULL PRIMARY KEY,
    backend_name varchar(255) NOT NULL,
    hostname     varchar(255) NOT NULL,
    pid          integer      NOT NULL,
    started_at   timestamptz  NOT NULL,
    heartbeat_at timestamptz  NOT NULL
)
;
-- Who runs maintenance (rescue, and later cron and pruning) for this database, and until when: the
-- holder renews before expires_at; anyone may take an expired row.
CREATE TABLE fasttasks_leader (
    name       varchar(64) NOT NULL PRIMARY KEY,
    worker_id  varchar(64) NOT NULL,
    expires_at timestamptz NOT NULL
)
