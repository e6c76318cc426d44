-- Qualification verdicts (`showdown qualify`): one row per model and profile
-- each time a profile's gates are checked against a run. gates_json holds
-- every gate with its value and limit, so the verdict can be shown without
-- recomputing it.

CREATE TABLE qualifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    profile     TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    qualified   INTEGER NOT NULL,
    gates_json  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);

CREATE INDEX qualifications_by_model ON qualifications (model, id);
