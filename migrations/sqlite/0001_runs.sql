-- Eval runs, written as they go: a run is 'running' until its last case is
-- stored, then 'complete'. A run whose process died ('running' with a dead
-- pid, or interrupted by Ctrl-C) becomes 'incomplete'; its finished cases
-- stay readable.

CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    status             TEXT    NOT NULL CHECK (status IN ('running', 'complete', 'incomplete', 'failed')),
    label              TEXT,
    target             TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    model_sha256       TEXT,
    engine_version     TEXT,
    git_sha            TEXT,
    scorer_version     TEXT    NOT NULL,
    sampling_json      TEXT    NOT NULL,
    seed               INTEGER NOT NULL,
    repeat             INTEGER NOT NULL,
    host_json          TEXT    NOT NULL,
    host_fingerprint   TEXT    NOT NULL,
    peak_memory_bytes  INTEGER,
    git_branch         TEXT,
    git_commit         TEXT,
    pr_number          INTEGER,
    pid                INTEGER NOT NULL,
    error              TEXT,
    started_at         TEXT    NOT NULL,
    finished_at        TEXT
);

CREATE INDEX runs_by_label ON runs (label, id);
CREATE INDEX runs_by_model ON runs (model, id);

-- The suites of a run, with the hash that makes two runs comparable.
CREATE TABLE run_suites (
    run_id         INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    suite          TEXT    NOT NULL,
    suite_version  INTEGER NOT NULL,
    suite_hash     TEXT    NOT NULL,
    cases          INTEGER NOT NULL,
    PRIMARY KEY (run_id, suite)
);

-- One sample of one case: its score, its figures and its whole transcript.
CREATE TABLE case_results (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    suite            TEXT    NOT NULL,
    case_id          TEXT    NOT NULL,
    sample           INTEGER NOT NULL,
    category         TEXT,
    must_pass        INTEGER NOT NULL,
    passed           INTEGER NOT NULL,
    score            REAL    NOT NULL,
    turns            INTEGER NOT NULL,
    tool_calls       INTEGER NOT NULL,
    wall_ms          REAL    NOT NULL,
    error            TEXT,
    scorer_version   TEXT    NOT NULL,
    transcript_json  TEXT    NOT NULL,
    finished_at      TEXT    NOT NULL,
    UNIQUE (run_id, suite, case_id, sample)
);

CREATE INDEX case_results_by_run ON case_results (run_id, suite);

-- Each check of a case result, with what it found (word count against the
-- limit, missing facts, tool-call differences).
CREATE TABLE check_results (
    case_result_id  INTEGER NOT NULL REFERENCES case_results (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    passed          INTEGER NOT NULL,
    score           REAL    NOT NULL,
    detail_json     TEXT    NOT NULL,
    PRIMARY KEY (case_result_id, position)
);

-- Each Messages request of a case, measured by the client from the stream
-- (DESIGN.md's metric names).
CREATE TABLE requests (
    case_result_id               INTEGER NOT NULL REFERENCES case_results (id) ON DELETE CASCADE,
    position                     INTEGER NOT NULL,
    ttft_ms                      REAL,
    e2e_ms                       REAL    NOT NULL,
    input_tokens                 INTEGER NOT NULL,
    cache_read_input_tokens      INTEGER NOT NULL,
    cache_creation_input_tokens  INTEGER NOT NULL,
    output_tokens                INTEGER NOT NULL,
    prefill_tok_s                REAL,
    decode_tok_s                 REAL,
    stop_reason                  TEXT,
    PRIMARY KEY (case_result_id, position)
);
