-- dockhand schema v6 (PostgreSQL)
-- The dashboard's hourly chart and prune find finished jobs by when they
-- finished without reading the whole table.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- How workers stopped lately (exit code and shutdown trace), kept for a
-- day: the registry forgets a worker the moment it deregisters.
CREATE TABLE IF NOT EXISTS worker_stops (
    id         text PRIMARY KEY,
    exit_code  integer     NOT NULL,
    trace      text        NOT NULL,
    stopped_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS worker_stops_at ON worker_stops (stopped_at);
