-- dockhand schema v4 (SQLite)
-- Queues an operator paused: workers claim nothing from them until resumed.
-- A queue without a row is not paused.
CREATE TABLE IF NOT EXISTS queues (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    paused     INTEGER NOT NULL DEFAULT 0,
    changed_at INTEGER NOT NULL
);
-- Unique jobs: at most one live (queued or running) job per key.
ALTER TABLE jobs ADD COLUMN unique_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_live ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_unique_key ON jobs (unique_key, id) WHERE unique_key IS NOT NULL;
