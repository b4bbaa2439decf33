-- Durable autonomous jobs: schedules, runs, leases with fencing tokens, and the goals → projects → tasks graph
-- the routines work on. Every time comparison in hub/jobs uses the database clock (now()).

-- A schedule per configured job, upserted from config at start. Disabled rows are kept (history) but not ticked.
CREATE TABLE schedules (
    name            text PRIMARY KEY,                 -- the job name; never renamed (a rename is a new job)
    expr            text        NOT NULL,             -- 'every 15m' or a cron expression, as written
    kind            text        NOT NULL CHECK (kind IN ('every', 'cron')),
    interval_ms     bigint      CHECK (interval_ms > 0),
    cron            text,
    timezone        text        NOT NULL DEFAULT 'UTC',
    CHECK ((kind = 'every') = (interval_ms IS NOT NULL) AND (kind = 'cron') = (cron IS NOT NULL)),
    enabled         boolean     NOT NULL DEFAULT true,
    misfire         text        NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    catch_up_cap    integer     NOT NULL DEFAULT 10 CHECK (catch_up_cap >= 0),
    timeout_s       double precision NOT NULL DEFAULT 300 CHECK (timeout_s > 0),
    max_attempts    integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    concurrency     integer     NOT NULL DEFAULT 4 CHECK (concurrency >= 1),
    next_run_at     timestamptz NOT NULL,             -- the next nominal tick (UTC instant)
    last_nominal_at timestamptz,                      -- the latest tick that got a run
    missed_count    bigint      NOT NULL DEFAULT 0,   -- ticks that got no run (misfire policy)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE enabled;

-- One row per run. A scheduled run is identified by (job, nominal_at): a tick processed twice inserts nothing.
-- Status: scheduled (waiting for run_after) → running → succeeded | failed | timed_out | dead.
-- failed and timed_out are retried at run_after while attempts < max_attempts; dead is the dead letter.
CREATE TABLE job_runs (
    id               bigserial PRIMARY KEY,
    job              text        NOT NULL REFERENCES schedules (name) ON DELETE CASCADE,
    nominal_at       timestamptz,                    -- the tick this run stands for; NULL for manual runs
    trigger          text        NOT NULL DEFAULT 'schedule' CHECK (trigger IN ('schedule', 'manual')),
    status           text        NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'running', 'succeeded', 'failed', 'timed_out', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3,
    timeout_s        double precision NOT NULL DEFAULT 300,
    run_after        timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      integer,
    lease_owner      text,                           -- instance id of the current (or last) holder
    lease_token      bigint,                         -- the fencing token of the job lease for this attempt
    lease_expires_at timestamptz,
    heartbeat_at     timestamptz,
    last_error       text,
    errors           jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- [{attempt, at, owner, kind, error}]
    result           jsonb,
    CONSTRAINT job_runs_tick_uq UNIQUE (job, nominal_at)
);
-- At most one running run per job, whatever the claimers do (the lease is the primary guard).
CREATE UNIQUE INDEX job_runs_one_running_uq ON job_runs (job) WHERE status = 'running';
CREATE INDEX job_runs_ready_idx ON job_runs (run_after, id) WHERE status IN ('scheduled', 'failed', 'timed_out');
CREATE INDEX job_runs_lease_idx ON job_runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX job_runs_history_idx ON job_runs (job, created_at DESC, id DESC);
CREATE INDEX job_runs_success_idx ON job_runs (job, finished_at DESC) WHERE status = 'succeeded';

-- Singleton leases. The token rises on every takeover and never goes back: rows are never deleted.
CREATE TABLE leases (
    name        text PRIMARY KEY,                    -- 'job:<name>'
    holder      text        NOT NULL,                -- instance id
    token       bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- Goals → projects → tasks. Routines lock rows (FOR UPDATE SKIP LOCKED) and stamp fence_token on what they write.
CREATE TABLE goals (
    id              bigserial PRIMARY KEY,
    title           text        NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description     text        NOT NULL DEFAULT '',
    template        text        NOT NULL DEFAULT 'default',  -- project template used by project generation
    target          double precision NOT NULL DEFAULT 1.0 CHECK (target > 0 AND target <= 1),  -- success share
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'achieved', 'dropped')),
    progress        double precision NOT NULL DEFAULT 0,
    created_by      text        NOT NULL DEFAULT 'user',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_planned_at timestamptz,
    fence_token     bigint
);
CREATE INDEX goals_active_idx ON goals (id) WHERE status = 'active';

CREATE TABLE projects (
    id          bigserial PRIMARY KEY,
    goal_id     bigint      NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    title       text        NOT NULL,
    template    text        NOT NULL,
    source      text        NOT NULL DEFAULT 'template' CHECK (source IN ('template', 'frontier')),
    status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'succeeded', 'failed')),
    outcome     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    fence_token bigint
);
-- One active project per goal: two generation passes can never both plan the same goal.
CREATE UNIQUE INDEX projects_one_active_uq ON projects (goal_id) WHERE status = 'active';

CREATE TABLE tasks (
    id              bigserial PRIMARY KEY,
    project_id      bigint      NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    goal_id         bigint      NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    position        integer     NOT NULL DEFAULT 0,
    title           text        NOT NULL,
    action          text        NOT NULL DEFAULT 'notify',  -- a key of the task action registry
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    hazardous       boolean     NOT NULL DEFAULT false,     -- never runs without a confirmation
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed', 'awaiting_confirmation', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    timeout_s       double precision NOT NULL DEFAULT 30 CHECK (timeout_s > 0),
    run_after       timestamptz NOT NULL DEFAULT now(),
    confirmation_id text,
    result          jsonb,
    last_error      text,
    errors          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_ms     integer,
    fence_token     bigint                                  -- token of the cycle that claimed it
);
CREATE INDEX tasks_pending_idx ON tasks (run_after, id) WHERE status = 'pending';
CREATE INDEX tasks_running_idx ON tasks (fence_token) WHERE status = 'running';
CREATE INDEX tasks_project_idx ON tasks (project_id);

-- What outcome measurement found: one row per finished project.
CREATE TABLE goal_outcomes (
    id          bigserial PRIMARY KEY,
    goal_id     bigint      NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    project_id  bigint      NOT NULL UNIQUE REFERENCES projects (id) ON DELETE CASCADE,
    measured_at timestamptz NOT NULL DEFAULT now(),
    tasks_total integer     NOT NULL,
    tasks_done  integer     NOT NULL,
    tasks_failed integer    NOT NULL,
    success     double precision NOT NULL,
    met_target  boolean     NOT NULL,
    fence_token bigint
);
