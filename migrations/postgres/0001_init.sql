-- dockhand schema v1 (PostgreSQL)
CREATE TABLE IF NOT EXISTS jobs (
    id                bigserial PRIMARY KEY,
    queue             text        NOT NULL CHECK (length(queue) BETWEEN 1 AND 200),
    spec              jsonb       NOT NULL,
    state             text        NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority          integer     NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL DEFAULT now(),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      integer     NOT NULL CHECK (max_attempts >= 1),
    interruptions     integer     NOT NULL DEFAULT 0 CHECK (interruptions >= 0),
    max_interruptions integer     NOT NULL DEFAULT 3 CHECK (max_interruptions >= 1),
    lease_owner       text,
    lease_token       bigint      NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    exit_code         integer,
    error             text,
    output            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

-- The claim is an index scan over ready jobs only.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
-- Reaping looks at running jobs by lease expiry.
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);

CREATE TABLE IF NOT EXISTS job_events (
    id          bigserial PRIMARY KEY,
    job_id      bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL,
    worker_id   text,
    lease_token bigint,
    detail      text
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);

CREATE TABLE IF NOT EXISTS workers (
    id           text PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    queues       text        NOT NULL,
    concurrency  integer     NOT NULL,
    phase        text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- A random identity of this database, so containers of different
-- deployments sharing one Docker engine are never confused.
CREATE TABLE IF NOT EXISTS dockhand_instance (
    id text PRIMARY KEY
);
INSERT INTO dockhand_instance (id)
SELECT md5(random()::text || clock_timestamp()::text)
WHERE NOT EXISTS (SELECT 1 FROM dockhand_instance);
