-- The dates the listing has covered so far: the oldest and newest recording listed, in
-- Unix seconds. The list stage runs only a bounded distance ahead of the fetches, so a
-- large backfill's listing completes near its end; until then these two estimate the
-- job's total for its ETA.
ALTER TABLE jobs ADD COLUMN listed_oldest BIGINT;
ALTER TABLE jobs ADD COLUMN listed_newest BIGINT;
