-- dockhand schema v5 (SQLite)
-- Periodic jobs: a cron expression (UTC) and the job to enqueue. Workers
-- enqueue a due slot by moving last_slot_ms forward in the same transaction
-- as the insert, so each slot is enqueued once.
CREATE TABLE IF NOT EXISTS schedules (
    name         TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    cron         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    spec         TEXT    NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    last_slot_ms INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
