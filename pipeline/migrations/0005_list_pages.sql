-- Which page of a job's Chorus listing first handed out each continuation key. A key
-- that comes back on a later page means the listing loops (A -> B -> A); the list
-- stage stops the job instead of paging forever.
CREATE TABLE list_pages (
    job_id TEXT NOT NULL,
    continuation_key TEXT NOT NULL,
    page BIGINT NOT NULL,
    PRIMARY KEY (job_id, continuation_key)
);
