-- dockhand schema v7 (SQLite)
-- PostgreSQL drops the foreign key from job_events to jobs in v7. SQLite
-- cannot drop a constraint without rebuilding the table, and its check is a
-- primary-key lookup in the same file, so it keeps it: nothing changes here.
SELECT 1;
