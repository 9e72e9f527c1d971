-- The manifest stage reads a job's files page by page in key order (so a 100,000-
-- recording manifest is never whole in memory); this index makes each page one range
-- read instead of a sort of the whole job's rows.
CREATE INDEX IF NOT EXISTS files_by_key ON files (job_id, object_key, recording_id, file);
