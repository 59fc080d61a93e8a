-- dockhand schema v5 (PostgreSQL)
-- Periodic jobs: a cron expression (UTC) and the job to enqueue. Workers
-- enqueue a due slot by moving last_slot_ms forward in the same transaction
-- as the insert, so each slot is enqueued once across the fleet.
CREATE TABLE IF NOT EXISTS schedules (
    name         text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    cron         text        NOT NULL,
    queue        text        NOT NULL,
    spec         jsonb       NOT NULL,
    priority     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL CHECK (max_attempts >= 1),
    last_slot_ms bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
