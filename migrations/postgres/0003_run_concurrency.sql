-- sqlite/0003_run_concurrency.sql in PostgreSQL's types.

ALTER TABLE runs ADD COLUMN concurrency BIGINT NOT NULL DEFAULT 1;
