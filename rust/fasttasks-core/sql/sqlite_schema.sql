-- fasttasks schema for SQLite; the same columns as postgres_schema.sql (read the comments there).
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (what Django writes for DateTimeField), which
-- sorts lexically in time order. JSON columns are text checked with json_valid.
-- Statements are separated by a line holding only ";".

CREATE TABLE fasttasks_task (
    id                varchar(64)  NOT NULL PRIMARY KEY,
    task_path         text         NOT NULL,
    queue_name        varchar(255) NOT NULL,
    backend_name      varchar(255) NOT NULL,
    priority          integer      NOT NULL DEFAULT 0
        CONSTRAINT fasttasks_task_priority_range CHECK (priority BETWEEN -100 AND 100),
    status            varchar(10)  NOT NULL DEFAULT 'READY'
        CONSTRAINT fasttasks_task_status_valid CHECK (status IN ('READY', 'RUNNING', 'SUCCESSFUL', 'FAILED')),
    args              text         NOT NULL DEFAULT '[]' CHECK (json_valid(args)),
    kwargs            text         NOT NULL DEFAULT '{}' CHECK (json_valid(kwargs)),
    run_after         datetime     NULL,
    available_at      datetime     NOT NULL,
    enqueued_at       datetime     NOT NULL,
    started_at        datetime     NULL,
    last_attempted_at datetime     NULL,
    finished_at       datetime     NULL,
    attempts          integer      NOT NULL DEFAULT 0,
    max_attempts      integer      NOT NULL DEFAULT 1,
    crashes           integer      NOT NULL DEFAULT 0,
    -- when fasttasks.cancel() asked a RUNNING task to stop; its worker finds it at its next heartbeat.
    cancel_requested_at datetime    NULL,
    -- set for tasks declared unique: a digest of the task path and its arguments (or of its unique_key);
    -- while a row is READY or RUNNING no other row of its backend holds the same key.
    unique_key        varchar(64)  NULL,
    worker_ids        text         NOT NULL DEFAULT '[]' CHECK (json_valid(worker_ids)),
    errors            text         NOT NULL DEFAULT '[]' CHECK (json_valid(errors)),
    return_value      text         NULL CHECK (return_value IS NULL OR json_valid(return_value)),
    worker_id         varchar(64)  NULL,
    lease_token       bigint       NULL,
    -- A lease exists only while RUNNING: claims set it, completion, release and rescue clear it. The
    -- completion guard matches on the lease alone, so this makes "lease matches" imply "RUNNING".
    CONSTRAINT fasttasks_task_lease_only_while_running CHECK (lease_token IS NULL OR status = 'RUNNING')
)
;
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
CREATE TABLE fasttasks_worker (
    id           varchar(64)  NOT NULL PRIMARY KEY,
    backend_name varchar(255) NOT NULL,
    hostname     varchar(255) NOT NULL,
    pid          integer      NOT NULL,
    started_at   datetime     NOT NULL,
    heartbeat_at datetime     NOT NULL
)
;
CREATE TABLE fasttasks_leader (
    name       varchar(64) NOT NULL PRIMARY KEY,
    worker_id  varchar(64) NOT NULL,
    expires_at datetime    NOT NULL
)
