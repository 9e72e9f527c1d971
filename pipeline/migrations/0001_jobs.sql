-- portshift job store. Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- Holds job metadata and per-file progress only: never credentials, recordings,
-- transcripts or participants' details (see DESIGN.md, "Trust").
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    organisation     TEXT NOT NULL,
    started_by       TEXT NOT NULL,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    finished_ms      BIGINT,
    status           TEXT NOT NULL,
    status_reason    TEXT,
    spec_json        TEXT NOT NULL,
    listing_complete BIGINT NOT NULL DEFAULT 0,
    manifest_key     TEXT,
    manifest_sha256  TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_org ON jobs (organisation, created_ms);

CREATE TABLE IF NOT EXISTS recordings (
    job_id          TEXT NOT NULL,
    recording_id    TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    recorded_at     BIGINT,
    duration_s      DOUBLE PRECISION,
    engagement_type TEXT,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (job_id, recording_id)
);
CREATE INDEX IF NOT EXISTS recordings_by_status ON recordings (job_id, status);

CREATE TABLE IF NOT EXISTS files (
    job_id       TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    file         TEXT NOT NULL,
    object_key   TEXT NOT NULL,
    bytes        BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (job_id, recording_id, file)
);
