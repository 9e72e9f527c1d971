-- Recurring incremental syncs. A schedule stores credential *references* only
-- (env:NAME, file:/path, aws:default, ...), never credential values.
CREATE TABLE IF NOT EXISTS schedules (
    id              TEXT PRIMARY KEY,
    organisation    TEXT NOT NULL,
    name            TEXT NOT NULL,
    cron            TEXT NOT NULL,
    timezone        TEXT NOT NULL,
    template_json   TEXT NOT NULL,
    credential_refs TEXT NOT NULL,
    start_s         BIGINT NOT NULL,
    paused          BIGINT NOT NULL DEFAULT 0,
    watermark_s     BIGINT,
    next_run_ms     BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL
);

-- One row per due slot: the primary key is what makes a run start exactly once when
-- several schedulers race for it.
CREATE TABLE IF NOT EXISTS schedule_runs (
    schedule_id TEXT NOT NULL,
    slot_ms     BIGINT NOT NULL,
    job_id      TEXT,
    status      TEXT NOT NULL,
    reason      TEXT,
    files       BIGINT,
    bytes       BIGINT,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, slot_ms)
);

-- What each schedule already exported to its destination: a later run skips these.
CREATE TABLE IF NOT EXISTS schedule_exported (
    schedule_id  TEXT NOT NULL,
    destination  TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    PRIMARY KEY (schedule_id, destination, recording_id)
);
