-- How many cases a run had in flight at once (`showdown run --concurrency N`).
-- Latency taken under concurrency includes the target's queueing, so it is
-- recorded with the run and compared only against runs taken the same way.
-- Runs from before this column ran one case at a time.

ALTER TABLE runs ADD COLUMN concurrency INTEGER NOT NULL DEFAULT 1;
