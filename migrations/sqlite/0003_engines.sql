-- dockhand schema v3 (SQLite)
-- The job's image, out of its spec: a worker whose Docker engine is away
-- claims only jobs without one.
ALTER TABLE jobs ADD COLUMN image TEXT;
UPDATE jobs SET image = json_extract(spec, '$.image') WHERE json_extract(spec, '$.image') IS NOT NULL;
-- Each worker's own lease (others judge it lost by it) and its Docker
-- engine's state (reachable, unreachable, or NULL: not configured).
ALTER TABLE workers ADD COLUMN lease_ms INTEGER;
ALTER TABLE workers ADD COLUMN docker TEXT;
