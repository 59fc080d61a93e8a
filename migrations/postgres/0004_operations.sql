-- dockhand schema v4 (PostgreSQL)
-- Queues an operator paused: workers claim nothing from them until resumed.
-- A queue without a row is not paused.
CREATE TABLE IF NOT EXISTS queues (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    paused     boolean     NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now()
);
-- Unique jobs: at most one live (queued or running) job per key, enforced
-- here so that concurrent enqueues cannot both win.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS unique_key text;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
-- Finding the job that holds a key (also once it finished).
CREATE INDEX IF NOT EXISTS jobs_unique_key ON jobs (unique_key, id) WHERE unique_key IS NOT NULL;
