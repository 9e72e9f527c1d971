-- Retention (pipeline/src/retention.rs): job history is kept 14 days by default, an
-- organisation may choose 1 to 365. Organisations still on the old, never-chosen 90-day
-- default move to 14 (one whose admin chose 90 keeps it: the choice is in the audit
-- trail); a period above the new upper bound is brought down to it. New organisations
-- get 14 from the code that creates them (SQLite cannot change a column default).
UPDATE organisations SET retention_days = 14
    WHERE retention_days = 90
      AND id NOT IN (SELECT org_id FROM audit_events WHERE action = 'retention.changed');
UPDATE organisations SET retention_days = 365 WHERE retention_days > 365;
UPDATE organisations SET retention_days = 1 WHERE retention_days < 1;

-- What the purge loop looks up: quiet jobs, expired sessions, old audit rows, and the
-- schedule rows that point at a job.
CREATE INDEX IF NOT EXISTS jobs_by_updated ON jobs (updated_ms);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_ms);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_events (at_ms);
CREATE INDEX IF NOT EXISTS rate_limits_by_window ON rate_limits (window_ms);
CREATE INDEX IF NOT EXISTS schedule_runs_by_job ON schedule_runs (job_id);
CREATE INDEX IF NOT EXISTS schedule_exported_by_job ON schedule_exported (job_id);
CREATE INDEX IF NOT EXISTS open_uploads_by_job ON open_uploads (job_id);
