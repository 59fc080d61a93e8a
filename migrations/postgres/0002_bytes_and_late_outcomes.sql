-- dockhand schema v2 (PostgreSQL)
-- Job output is arbitrary bytes (a NUL cannot be stored in text).
ALTER TABLE jobs ALTER COLUMN output TYPE bytea USING convert_to(output, 'UTF8');
-- Set by a reap, cleared by a claim, an outcome, a retry or a cancel: while
-- set, the reaped run's late outcome is still accepted (nobody claimed since).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_expired boolean NOT NULL DEFAULT false;
-- The worker's id for the claim that took the current lease, so a claim
-- whose reply was lost can be recovered.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS claim_id bigint;
