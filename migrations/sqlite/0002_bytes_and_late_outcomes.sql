-- dockhand schema v2 (SQLite)
-- Job output is stored as a BLOB from now on (SQLite keeps a BLOB as is in
-- any column); earlier text is read back as its UTF-8 bytes.
-- Set by a reap, cleared by a claim, an outcome, a retry or a cancel: while
-- set, the reaped run's late outcome is still accepted (nobody claimed since).
ALTER TABLE jobs ADD COLUMN lease_expired INTEGER NOT NULL DEFAULT 0;
-- The worker's id for the claim that took the current lease, so a claim
-- whose reply was lost can be recovered.
ALTER TABLE jobs ADD COLUMN claim_id INTEGER;
