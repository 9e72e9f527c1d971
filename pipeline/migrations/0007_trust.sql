-- The trust level of each job and schedule: 'operator' (created with the CLI: may use
-- the machine's identity, environment, files and private networks) or 'tenant'
-- (created through the console or the API: may not). Rows from before this column
-- existed count as tenant rows, except those of the CLI's own organisation "local".
ALTER TABLE jobs ADD COLUMN trust TEXT NOT NULL DEFAULT 'tenant';
UPDATE jobs SET trust = 'operator' WHERE organisation = 'local';
ALTER TABLE schedules ADD COLUMN trust TEXT NOT NULL DEFAULT 'tenant';
UPDATE schedules SET trust = 'operator' WHERE organisation = 'local';
