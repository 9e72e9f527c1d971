-- Worker leases (pipeline/src/leases.rs): each worker process serving a job holds one
-- row, renewed with every heartbeat and deleted when it exits cleanly. A running job
-- none of whose leases is live (and whose heartbeat is stale) has lost every worker:
-- the supervisor loop of `serve` and `scheduler` picks it up. Host and pid are for
-- operators looking for the process.
CREATE TABLE IF NOT EXISTS worker_leases (
    worker_id  TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    host       TEXT NOT NULL,
    pid        BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    renewed_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS worker_leases_by_job ON worker_leases (job_id, expires_ms);
