-- S3 multipart uploads a worker started and has not yet completed or aborted. A worker
-- killed mid-upload leaves its row here; the next attempt at the same key, and the
-- manifest stage at the end of the job, abort what is left, so no orphaned parts stay
-- billed in the customer's bucket (without needing s3:ListBucketMultipartUploads).
CREATE TABLE open_uploads (
    job_id     TEXT NOT NULL,
    object_key TEXT NOT NULL,
    upload_id  TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (job_id, upload_id)
);
