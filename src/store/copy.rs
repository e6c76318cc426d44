//! `showdown db copy FROM TO`: moves a history between stores (a runner's
//! SQLite file into the team's PostgreSQL, or back), so a team starts from
//! the runs it has.
//!
//! Rows are copied column for column (both schemas have the same columns,
//! in each database's types) under new ids in the target, with every
//! reference rewritten. A run already in the target (same start time, host,
//! pid, target and model) is left alone, so copying twice adds nothing; a run
//! still `running` is not copied (its lock cannot move with it).

use std::collections::HashMap;

use anyhow::{Context, Result};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use super::{flag, Store};

/// How a column is read from one store and written to the other.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Real,
    Text,
    Flag,
    /// A verdict's gates: JSON text whose run ids are rewritten.
    Gates,
}

use Kind::{Flag, Gates, Int, Real, Text};

/// A table's columns other than its own id and the reference rewritten.
struct Table {
    name: &'static str,
    /// The column pointing at the parent row (rewritten to its new id).
    parent: &'static str,
    columns: &'static [(&'static str, Kind)],
}

const RUNS: Table = Table {
    name: "runs",
    parent: "",
    columns: &[
        ("status", Text),
        ("label", Text),
        ("target", Text),
        ("model", Text),
        ("model_sha256", Text),
        ("engine_version", Text),
        ("git_sha", Text),
        ("scorer_version", Text),
        ("sampling_json", Text),
        ("seed", Int),
        ("repeat", Int),
        ("concurrency", Int),
        ("host_json", Text),
        ("host_fingerprint", Text),
        ("peak_memory_bytes", Int),
        ("git_branch", Text),
        ("git_commit", Text),
        ("pr_number", Int),
        ("pid", Int),
        ("error", Text),
        ("started_at", Text),
        ("finished_at", Text),
    ],
};

const RUN_SUITES: Table = Table {
    name: "run_suites",
    parent: "run_id",
    columns: &[
        ("suite", Text),
        ("suite_version", Int),
        ("suite_hash", Text),
        ("cases", Int),
    ],
};

const CASE_RESULTS: Table = Table {
    name: "case_results",
    parent: "run_id",
    columns: &[
        ("suite", Text),
        ("case_id", Text),
        ("sample", Int),
        ("category", Text),
        ("must_pass", Flag),
        ("passed", Flag),
        ("score", Real),
        ("turns", Int),
        ("tool_calls", Int),
        ("wall_ms", Real),
        ("error", Text),
        ("scorer_version", Text),
        ("transcript_json", Text),
        ("finished_at", Text),
    ],
};

const CHECK_RESULTS: Table = Table {
    name: "check_results",
    parent: "case_result_id",
    columns: &[
        ("position", Int),
        ("kind", Text),
        ("passed", Flag),
        ("score", Real),
        ("detail_json", Text),
    ],
};

const REQUESTS: Table = Table {
    name: "requests",
    parent: "case_result_id",
    columns: &[
        ("position", Int),
        ("ttft_ms", Real),
        ("e2e_ms", Real),
        ("input_tokens", Int),
        ("cache_read_input_tokens", Int),
        ("cache_creation_input_tokens", Int),
        ("output_tokens", Int),
        ("prefill_tok_s", Real),
        ("decode_tok_s", Real),
        ("stop_reason", Text),
    ],
};

const QUALIFICATIONS: Table = Table {
    name: "qualifications",
    parent: "run_id",
    columns: &[
        ("profile", Text),
        ("model", Text),
        ("qualified", Flag),
        ("gates_json", Gates),
        ("created_at", Text),
    ],
};

/// One value, typed so a NULL still carries its column's type.
enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Flag(bool),
    Gates(Option<String>),
}

fn read(row: &AnyRow, table: &Table) -> Result<Vec<Cell>> {
    table
        .columns
        .iter()
        .map(|&(column, kind)| {
            let context = || format!("reading {}.{column}", table.name);
            Ok(match kind {
                Int => Cell::Int(row.try_get(column).with_context(context)?),
                Real => Cell::Real(row.try_get(column).with_context(context)?),
                Text => Cell::Text(row.try_get(column).with_context(context)?),
                Flag => Cell::Flag(flag(row, column)),
                Gates => Cell::Gates(row.try_get(column).with_context(context)?),
            })
        })
        .collect()
}

fn bind<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    cells: Vec<Cell>,
) -> Query<'q, Any, AnyArguments<'q>> {
    cells.into_iter().fold(query, |query, cell| match cell {
        Cell::Int(v) => query.bind(v),
        Cell::Real(v) => query.bind(v),
        Cell::Text(v) | Cell::Gates(v) => query.bind(v),
        Cell::Flag(v) => query.bind(v),
    })
}

/// `INSERT INTO table (parent?, columns…) VALUES ($1, …)`, returning the new
/// id when the table has one.
fn insert_sql(table: &Table, returning_id: bool) -> String {
    let mut names: Vec<&str> = Vec::new();
    if !table.parent.is_empty() {
        names.push(table.parent);
    }
    names.extend(table.columns.iter().map(|(name, _)| *name));
    let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}){}",
        table.name,
        names.join(", "),
        placeholders.join(", "),
        if returning_id { " RETURNING id" } else { "" }
    )
}

/// What a copy did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyReport {
    /// (id in the source, id in the target) of each run copied.
    pub runs: Vec<(i64, i64)>,
    /// Case results copied.
    pub cases: u64,
    /// Requests copied.
    pub requests: u64,
    /// Check results copied.
    pub checks: u64,
    /// Qualification verdicts copied.
    pub qualifications: u64,
    /// Source runs the target already had (by start, host, pid, target, model).
    pub already_there: Vec<i64>,
    /// Source runs still running, not copied.
    pub running: Vec<i64>,
}

/// Copies every finished run of `from`, with its suites, cases, checks and
/// requests (each run in one transaction), then every verdict the target
/// lacks, into `to`.
pub async fn copy_history(from: &Store, to: &Store) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    // Source run id → target run id, for runs copied now or before.
    let mut run_ids = HashMap::new();
    let runs = sqlx::query("SELECT * FROM runs ORDER BY id")
        .fetch_all(from.pool())
        .await?;
    for run in &runs {
        let old_id: i64 = run.get("id");
        if run.get::<String, _>("status") == "running" {
            report.running.push(old_id);
            continue;
        }
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE started_at = $1 AND host_fingerprint = $2 AND pid = $3
                 AND target = $4 AND model = $5",
        )
        .bind(run.get::<String, _>("started_at"))
        .bind(run.get::<String, _>("host_fingerprint"))
        .bind(run.get::<i64, _>("pid"))
        .bind(run.get::<String, _>("target"))
        .bind(run.get::<String, _>("model"))
        .fetch_optional(to.pool())
        .await?;
        if let Some(existing) = existing {
            report.already_there.push(old_id);
            run_ids.insert(old_id, existing);
            continue;
        }
        let new_id = copy_run(from, to, run, old_id, &mut report)
            .await
            .with_context(|| format!("copying run {old_id}"))?;
        report.runs.push((old_id, new_id));
        run_ids.insert(old_id, new_id);
    }
    copy_qualifications(from, to, &run_ids, &mut report)
        .await
        .context("copying the qualification verdicts")?;
    Ok(report)
}

/// Copies the verdicts `to` lacks (by run, profile, model and time), with
/// the run ids in their gates rewritten to the target's.
async fn copy_qualifications(
    from: &Store,
    to: &Store,
    run_ids: &HashMap<i64, i64>,
    report: &mut CopyReport,
) -> Result<()> {
    let sql = insert_sql(&QUALIFICATIONS, false);
    for row in sqlx::query("SELECT * FROM qualifications ORDER BY id")
        .fetch_all(from.pool())
        .await?
    {
        // A verdict on a run not copied (still running) waits for it.
        let Some(&run_id) = run_ids.get(&row.get::<i64, _>("run_id")) else {
            continue;
        };
        let created_at: String = row.get("created_at");
        let profile: String = row.get("profile");
        let model: String = row.get("model");
        let there: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM qualifications WHERE run_id = $1 AND profile = $2 AND model = $3
                 AND created_at = $4",
        )
        .bind(run_id)
        .bind(&profile)
        .bind(&model)
        .bind(&created_at)
        .fetch_optional(to.pool())
        .await?;
        if there.is_some() {
            continue;
        }
        let mut cells = read(&row, &QUALIFICATIONS)?;
        for cell in &mut cells {
            if let Cell::Gates(Some(gates)) = cell {
                *gates = rewrite_gate_runs(gates, run_ids)?;
            }
        }
        bind(sqlx::query(&sql).bind(run_id), cells)
            .execute(to.pool())
            .await?;
        report.qualifications += 1;
    }
    Ok(())
}

/// A verdict's gates with each `run_id` mapped to the target's id (a run
/// the target does not have becomes null: the gate's figure stays, its
/// link goes).
fn rewrite_gate_runs(gates_json: &str, run_ids: &HashMap<i64, i64>) -> Result<String> {
    let mut gates: serde_json::Value =
        serde_json::from_str(gates_json).context("a verdict's gates are not JSON")?;
    if let Some(gates) = gates.as_array_mut() {
        for gate in gates {
            if let Some(run) = gate.get_mut("run_id") {
                *run = run
                    .as_i64()
                    .and_then(|old| run_ids.get(&old))
                    .map_or(serde_json::Value::Null, |&new| new.into());
            }
        }
    }
    Ok(gates.to_string())
}

async fn copy_run(
    from: &Store,
    to: &Store,
    run: &AnyRow,
    old_id: i64,
    report: &mut CopyReport,
) -> Result<i64> {
    let mut tx = to.pool().begin().await?;
    let sql = insert_sql(&RUNS, true);
    let new_id: i64 = bind(sqlx::query(&sql), read(run, &RUNS)?)
        .fetch_one(&mut *tx)
        .await?
        .get(0);

    let sql = insert_sql(&RUN_SUITES, false);
    for row in sqlx::query("SELECT * FROM run_suites WHERE run_id = $1")
        .bind(old_id)
        .fetch_all(from.pool())
        .await?
    {
        bind(sqlx::query(&sql).bind(new_id), read(&row, &RUN_SUITES)?)
            .execute(&mut *tx)
            .await?;
    }

    let mut case_ids = HashMap::new();
    let sql = insert_sql(&CASE_RESULTS, true);
    for row in sqlx::query("SELECT * FROM case_results WHERE run_id = $1 ORDER BY id")
        .bind(old_id)
        .fetch_all(from.pool())
        .await?
    {
        let new_case: i64 = bind(sqlx::query(&sql).bind(new_id), read(&row, &CASE_RESULTS)?)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        case_ids.insert(row.get::<i64, _>("id"), new_case);
        report.cases += 1;
    }

    for (table, count) in [
        (&CHECK_RESULTS, &mut report.checks),
        (&REQUESTS, &mut report.requests),
    ] {
        let select = format!(
            "SELECT t.* FROM {} t JOIN case_results c ON c.id = t.case_result_id
             WHERE c.run_id = $1 ORDER BY t.case_result_id, t.position",
            table.name
        );
        let sql = insert_sql(table, false);
        for row in sqlx::query(&select)
            .bind(old_id)
            .fetch_all(from.pool())
            .await?
        {
            let old_case: i64 = row.get("case_result_id");
            let new_case = *case_ids
                .get(&old_case)
                .with_context(|| format!("{} row of unknown case {old_case}", table.name))?;
            bind(sqlx::query(&sql).bind(new_case), read(&row, table)?)
                .execute(&mut *tx)
                .await?;
            *count += 1;
        }
    }
    tx.commit().await?;
    Ok(new_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_name_the_parent_first_and_number_every_column() {
        assert_eq!(
            insert_sql(&RUN_SUITES, false),
            "INSERT INTO run_suites (run_id, suite, suite_version, suite_hash, cases) \
             VALUES ($1, $2, $3, $4, $5)"
        );
        assert!(insert_sql(&RUNS, true).ends_with("$22) RETURNING id"));
    }

    #[test]
    fn gates_point_at_the_targets_runs() {
        let run_ids = HashMap::from([(7, 2), (9, 3)]);
        let gates = r#"[{"suite":"a","run_id":7},{"suite":"b","run_id":9},{"suite":"c","run_id":null},{"suite":"d","run_id":5}]"#;
        let rewritten: serde_json::Value =
            serde_json::from_str(&rewrite_gate_runs(gates, &run_ids).unwrap()).unwrap();
        let runs: Vec<_> = rewritten
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["run_id"].as_i64())
            .collect();
        assert_eq!(runs, [Some(2), Some(3), None, None]);
    }
}
