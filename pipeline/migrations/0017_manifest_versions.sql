-- Which version of each file an export holds, and when it was written, for the
-- manifest (docs/manifest.md, "Deleted and changed recordings"):
-- - files.source_modified_at: Chorus's `_modified_at` of the conversation as read when
--   the file was fetched (verbatim; NULL when Chorus did not say);
-- - files.exported_ms: when these bytes were written at their key (a redelivery that
--   rewrites identical bytes keeps the first time);
-- - recordings.source_state: `deleted_in_source` for a recording the listing returned
--   and Chorus answered 404 for afterwards (deleted, or made private, during the export);
-- - jobs.manifest_generation: bumped when read-back verification takes a file back out
--   of the export, so the manifest that a replay asks for afterwards is a new request
--   and not a duplicate of the first one inside JetStream's duplicate window.
ALTER TABLE files ADD COLUMN source_modified_at TEXT;
ALTER TABLE files ADD COLUMN exported_ms BIGINT;
ALTER TABLE recordings ADD COLUMN source_state TEXT;
ALTER TABLE jobs ADD COLUMN manifest_generation BIGINT NOT NULL DEFAULT 0;
