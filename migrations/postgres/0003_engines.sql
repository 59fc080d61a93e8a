-- dockhand schema v3 (PostgreSQL)
-- The job's image, out of its spec: a worker whose Docker engine is away
-- claims only jobs without one.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS image text;
UPDATE jobs SET image = spec->>'image' WHERE spec ? 'image' AND image IS NULL;
-- Each worker's own lease (others judge it lost by it) and its Docker
-- engine's state (reachable, unreachable, or NULL: not configured).
ALTER TABLE workers ADD COLUMN IF NOT EXISTS lease_ms bigint;
ALTER TABLE workers ADD COLUMN IF NOT EXISTS docker text;
