//! The results store: a SQLite file (the embedded default, WAL mode so the
//! dashboard can read while a run writes) or a PostgreSQL server a team
//! shares, both through sqlx's `Any` driver with one set of queries (`$N`
//! placeholders, which SQLite reads too). Schema in `migrations/sqlite` and
//! `migrations/postgres`: the same versions in each database's types,
//! embedded and applied when a store is opened.
//!
//! A run is written as it goes: the run row first (`running`), then each case
//! result in its own transaction, and `complete` only at the end. Opening a
//! store marks runs whose process is gone `incomplete`, so an interrupted run
//! is never shown as complete and its finished cases stay readable.
//!
//! A live run holds an advisory lock the system releases when its process
//! dies, however it dies, so a `running` run whose lock is free is over: on
//! SQLite a lock on `<db>.runs/<id>.lock` (flock on Unix, LockFileEx on
//! Windows), on PostgreSQL a session advisory lock on a connection the run
//! keeps open (the server drops it with the connection, from any host). Pids
//! are recorded but not trusted (they are reused, and not every OS has `/proc`).
//!
//! An older build opens a database a newer one migrated: migrations it does
//! not know are ignored (they only ever add), so it can read and append.

mod copy;
mod location;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Row};

use crate::report::{GateResult, Verdict};

pub use copy::{copy_history, CopyReport};
pub use location::DbLocation;

/// The machine a run ran on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical cores.
    pub cores: usize,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Operating system and kernel.
    pub os: String,
}

impl HostInfo {
    /// This machine, from /proc where available.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            os: format!("{} {kernel}", std::env::consts::OS)
                .trim()
                .to_string(),
        }
    }

    /// A short hash of everything above: runs compare only on equal fingerprints.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = format!(
            "{}|{}|{}|{}",
            self.cpu_model,
            self.cores,
            // Memory rounded to GiB: the kernel's count moves a little between boots.
            self.memory_bytes >> 30,
            self.os
        );
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }
}

/// What a new run records before its first case.
#[derive(Debug, Clone, Serialize)]
pub struct NewRun {
    /// Free label (a branch, a PR).
    pub label: Option<String>,
    /// `builtin:MODEL` or a base URL.
    pub target: String,
    /// The model name requested.
    pub model: String,
    /// The pinned file's sha256 (builtin targets).
    pub model_sha256: Option<String>,
    /// showdown-engine's version.
    pub engine_version: String,
    /// The git commit showdown was built from, when known.
    pub git_sha: Option<String>,
    /// Scorer version.
    pub scorer_version: String,
    /// Sampling settings.
    pub sampling: Value,
    /// Seed.
    pub seed: u64,
    /// Samples per case.
    pub repeat: u32,
    /// Cases in flight at once (1: one after another).
    pub concurrency: u32,
    /// The machine.
    pub host: HostInfo,
    /// Git branch under test (CI).
    pub git_branch: Option<String>,
    /// Git commit under test (CI).
    pub git_commit: Option<String>,
    /// Pull request number (CI).
    pub pr_number: Option<u64>,
}

/// One Messages request's figures, in DESIGN.md's names.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestMetrics {
    /// Request sent → first content delta.
    pub ttft_ms: Option<f64>,
    /// Request sent → stream end.
    pub e2e_ms: f64,
    /// Uncached prompt tokens.
    pub input_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cache_read_input_tokens: u64,
    /// Prompt tokens written to the cache.
    pub cache_creation_input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Uncached input tokens / TTFT.
    pub prefill_tok_s: Option<f64>,
    /// (output_tokens − 1) / (e2e − TTFT).
    pub decode_tok_s: Option<f64>,
    /// Why the response ended.
    pub stop_reason: Option<String>,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckRecord {
    /// Check kind (`max_words`, `tool_calls`, …).
    pub kind: String,
    /// Whether it passed.
    pub passed: bool,
    /// 0–1.
    pub score: f64,
    /// What it found.
    pub detail: Value,
}

/// One sample of one case, complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Suite name.
    pub suite: String,
    /// Case id.
    pub case_id: String,
    /// Sample number, from 0.
    pub sample: u32,
    /// Case category.
    pub category: Option<String>,
    /// Whether the case must pass.
    pub must_pass: bool,
    /// All checks passed.
    pub passed: bool,
    /// Case score, 0–1.
    pub score: f64,
    /// Model turns.
    pub turns: u32,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Wall time of the case.
    pub wall_ms: f64,
    /// What went wrong, when the case could not run to its end.
    pub error: Option<String>,
    /// Scorer version that scored it.
    pub scorer_version: String,
    /// Every request and response.
    pub transcript: Value,
    /// Check outcomes.
    pub checks: Vec<CheckRecord>,
    /// Request figures.
    pub requests: Vec<RequestMetrics>,
}

/// A run as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Run id.
    pub id: i64,
    /// running, complete, incomplete, failed.
    pub status: String,
    /// Label.
    pub label: Option<String>,
    /// Target.
    pub target: String,
    /// Model.
    pub model: String,
    /// Model sha256.
    pub model_sha256: Option<String>,
    /// Engine version.
    pub engine_version: Option<String>,
    /// Git sha of showdown.
    pub git_sha: Option<String>,
    /// Scorer version.
    pub scorer_version: String,
    /// Sampling settings.
    pub sampling: Value,
    /// Seed.
    pub seed: i64,
    /// Samples per case.
    pub repeat: i64,
    /// Cases that were in flight at once: its latency figures were taken
    /// under this concurrency.
    pub concurrency: i64,
    /// Host.
    pub host: Value,
    /// Host fingerprint.
    pub host_fingerprint: String,
    /// Peak engine memory.
    pub peak_memory_bytes: Option<i64>,
    /// Branch under test.
    pub git_branch: Option<String>,
    /// Commit under test.
    pub git_commit: Option<String>,
    /// PR number.
    pub pr_number: Option<i64>,
    /// Why the run failed.
    pub error: Option<String>,
    /// The runner's process id on its host (recorded, never trusted).
    pub pid: i64,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// End time.
    pub finished_at: Option<String>,
    /// Suites with versions and hashes.
    pub suites: Vec<SuiteRow>,
}

/// A suite of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteRow {
    /// Suite name.
    pub suite: String,
    /// Suite version.
    pub version: i64,
    /// Hash of the suite and its fixtures.
    pub hash: String,
    /// Cases in the suite.
    pub cases: i64,
}

/// `migrations/sqlite/*.sql`, embedded in the binary: (version, description,
/// SQL). The same versions, descriptions and checksums `sqlx::migrate!` would
/// give, without building sqlx's proc macros (and a second SQLite) for the host.
const SQLITE_MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "runs",
        include_str!("../../migrations/sqlite/0001_runs.sql"),
    ),
    (
        2,
        "qualifications",
        include_str!("../../migrations/sqlite/0002_qualifications.sql"),
    ),
    (
        3,
        "run concurrency",
        include_str!("../../migrations/sqlite/0003_run_concurrency.sql"),
    ),
];

/// `migrations/postgres/*.sql`: the same history in PostgreSQL's types.
const POSTGRES_MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "runs",
        include_str!("../../migrations/postgres/0001_runs.sql"),
    ),
    (
        2,
        "qualifications",
        include_str!("../../migrations/postgres/0002_qualifications.sql"),
    ),
    (
        3,
        "run concurrency",
        include_str!("../../migrations/postgres/0003_run_concurrency.sql"),
    ),
];

/// One backend's migrations as a source for sqlx's migrator.
#[derive(Debug)]
struct EmbeddedMigrations(&'static [(i64, &'static str, &'static str)]);

impl sqlx::migrate::MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        'static,
        std::result::Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        (*description).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A stored qualification verdict.
#[derive(Debug, Clone, Serialize)]
pub struct StoredVerdict {
    /// Row id.
    pub id: i64,
    /// The newest run the verdict used.
    pub run_id: i64,
    /// The profile.
    pub profile: String,
    /// The model.
    pub model: String,
    /// QUALIFIED or NOT.
    pub qualified: bool,
    /// Every gate with its value and limit.
    pub gates: Vec<GateResult>,
    /// When it was given (RFC 3339).
    pub created_at: String,
}

/// A stored case result with its checks and request figures.
#[derive(Debug, Clone, Serialize)]
pub struct StoredCase {
    /// Row id.
    pub id: i64,
    /// The record.
    #[serde(flatten)]
    pub record: CaseRecord,
}

/// The results database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The locks of the runs this process is running, by run id.
    held: Arc<Mutex<HashMap<i64, RunLock>>>,
}

/// Which database a store is, with what liveness needs.
#[derive(Clone, Debug)]
enum Backend {
    /// A SQLite file; live runs' lock files are in `<db>.runs/`.
    Sqlite { locks_dir: PathBuf },
    /// A PostgreSQL server.
    Postgres,
}

/// What keeps a live run's lock taken.
enum RunLock {
    /// The open, locked `<db>.runs/<id>.lock`.
    File(File),
    /// The connection holding the run's session advisory lock.
    Session(AnyConnection),
}

/// The first key of showdown's PostgreSQL advisory locks ("show"); the second
/// is the run id. sqlx's migrator locks with one bigint key, a separate space.
const ADVISORY_LOCK_CLASS: i32 = 0x7368_6f77;

/// The run id as the advisory lock's second key.
fn advisory_key(id: i64) -> Result<i32> {
    i32::try_from(id).with_context(|| format!("run id {id} does not fit an advisory lock key"))
}

/// sqlx's `Any` driver needs its backends installed once per process.
fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

impl Store {
    /// Opens (creating it if needed) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::connect(&DbLocation::Sqlite(path.to_path_buf())).await
    }

    /// Opens the database at `location` (creating a SQLite file if needed),
    /// applies the migrations and marks runs whose process is gone incomplete.
    pub async fn connect(location: &DbLocation) -> Result<Self> {
        install_drivers();
        let (pool, backend, migrations) = match location {
            DbLocation::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                let url = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .to_url_lossy();
                let options = AnyConnectOptions::from_url(&url)?;
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    // What a SQLite URL cannot say: WAL so readers never wait
                    // on the writer, foreign keys, and a wait for the write lock
                    // rather than an error when another process holds it.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 10000",
                            ] {
                                sqlx::Executor::execute(&mut *conn, pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?;
                let mut locks_dir = path.as_os_str().to_owned();
                locks_dir.push(".runs");
                let backend = Backend::Sqlite {
                    locks_dir: PathBuf::from(locks_dir),
                };
                (pool, backend, &SQLITE_MIGRATIONS)
            }
            DbLocation::Postgres(url) => {
                let options = AnyConnectOptions::from_str(url)
                    .with_context(|| format!("reading the database URL {location}"))?;
                // The pool retries until its timeout and then says only that:
                // one plain connection first says why a server is unreachable
                // (refused, unknown host, a wrong password, no such database).
                let probe = tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    AnyConnection::connect_with(&options),
                )
                .await
                .map_err(|_| anyhow::anyhow!("connecting to {location}: no answer in 20 s"))?
                .with_context(|| format!("connecting to {location}"))?;
                let _ = probe.close().await;
                let pool = AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(std::time::Duration::from_secs(20))
                    .connect_with(options)
                    .await
                    .with_context(|| format!("connecting to {location}"))?;
                (pool, Backend::Postgres, &POSTGRES_MIGRATIONS)
            }
        };
        let mut migrator = sqlx::migrate::Migrator::new(EmbeddedMigrations(migrations))
            .await
            .context("reading the embedded migrations")?;
        // A newer build's migrations are applied but unknown here: an older
        // binary (compare --base-bin) must still read and append.
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("migrating {location}"))?;
        let store = Self {
            pool,
            backend,
            held: Arc::default(),
        };
        store.mark_abandoned_runs().await?;
        Ok(store)
    }

    /// Whether this store is a PostgreSQL server.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres)
    }

    /// The lock file of run `id` (SQLite).
    fn lock_path(locks_dir: &Path, id: i64) -> PathBuf {
        locks_dir.join(format!("{id}.lock"))
    }

    /// Whether some process holds run `id`'s lock file (SQLite).
    fn lock_file_is_held(locks_dir: &Path, id: i64) -> Result<bool> {
        let path = Self::lock_path(locks_dir, id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        match file.try_lock() {
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("testing the lock {}", path.display()))
            }
        }
    }

    /// Marks `running` runs whose lock no process holds `incomplete`.
    pub async fn mark_abandoned_runs(&self) -> Result<u64> {
        let rows = sqlx::query("SELECT id FROM runs WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        let mut marked = 0;
        for row in rows {
            let id: i64 = row.get("id");
            marked += match &self.backend {
                Backend::Sqlite { locks_dir } => {
                    if Self::lock_file_is_held(locks_dir, id)? {
                        continue;
                    }
                    let marked = self.mark_incomplete(&self.pool, id).await?;
                    let _ = std::fs::remove_file(Self::lock_path(locks_dir, id));
                    marked
                }
                Backend::Postgres => {
                    // The transaction-level lock conflicts with the runner's
                    // session lock on the same keys: taken, the runner is gone,
                    // and no new holder can appear before the update commits.
                    let mut tx = self.pool.begin().await?;
                    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
                        .bind(ADVISORY_LOCK_CLASS)
                        .bind(advisory_key(id)?)
                        .fetch_one(&mut *tx)
                        .await?;
                    let marked = if free {
                        self.mark_incomplete(&mut *tx, id).await?
                    } else {
                        0
                    };
                    tx.commit().await?;
                    marked
                }
            };
        }
        Ok(marked)
    }

    /// Marks run `id` incomplete if it is still `running` (it may have
    /// finished since it was listed).
    async fn mark_incomplete<'e, E>(&self, executor: E, id: i64) -> Result<u64>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        Ok(sqlx::query(
            "UPDATE runs SET status = 'incomplete', finished_at = $1,
                 error = COALESCE(error, $2) WHERE id = $3 AND status = 'running'",
        )
        .bind(now())
        .bind("the run's process ended before it finished")
        .bind(id)
        .execute(executor)
        .await?
        .rows_affected())
    }

    /// Takes the lock of new run `id`, held until [`Store::finish_run`] or
    /// this process's end.
    async fn lock_run(&self, id: i64) -> Result<RunLock> {
        match &self.backend {
            Backend::Sqlite { locks_dir } => {
                std::fs::create_dir_all(locks_dir)
                    .with_context(|| format!("creating {}", locks_dir.display()))?;
                let path = Self::lock_path(locks_dir, id);
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                file.try_lock()
                    .with_context(|| format!("locking {}", path.display()))?;
                Ok(RunLock::File(file))
            }
            Backend::Postgres => {
                // A connection of its own, out of the pool: the pool may close
                // or recycle its connections, and the lock lives as long as
                // the connection that took it.
                let mut conn = self.pool.acquire().await?.detach();
                let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(ADVISORY_LOCK_CLASS)
                    .bind(advisory_key(id)?)
                    .fetch_one(&mut conn)
                    .await?;
                anyhow::ensure!(taken, "run {id}'s advisory lock is already held");
                Ok(RunLock::Session(conn))
            }
        }
    }

    /// Records a new run as `running` and holds its lock; returns its id.
    pub async fn create_run(&self, run: &NewRun) -> Result<i64> {
        // The lock is taken before the row is committed: no other process
        // can see the run without its lock held.
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (status, label, target, model, model_sha256, engine_version, git_sha,
                 scorer_version, sampling_json, seed, repeat, concurrency, host_json,
                 host_fingerprint, git_branch, git_commit, pr_number, pid, started_at)
             VALUES ('running', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                 $16, $17, $18)
             RETURNING id",
        )
        .bind(&run.label)
        .bind(&run.target)
        .bind(&run.model)
        .bind(&run.model_sha256)
        .bind(&run.engine_version)
        .bind(&run.git_sha)
        .bind(&run.scorer_version)
        .bind(run.sampling.to_string())
        .bind(run.seed as i64)
        .bind(run.repeat as i64)
        .bind(run.concurrency.max(1) as i64)
        .bind(serde_json::to_string(&run.host)?)
        .bind(run.host.fingerprint())
        .bind(&run.git_branch)
        .bind(&run.git_commit)
        .bind(run.pr_number.map(|n| n as i64))
        .bind(std::process::id() as i64)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        let lock = self.lock_run(id).await?;
        tx.commit().await?;
        self.held
            .lock()
            .map_err(|_| anyhow::anyhow!("the run-lock table was poisoned"))?
            .insert(id, lock);
        Ok(id)
    }

    /// Records a suite of a run.
    pub async fn add_suite(
        &self,
        run_id: i64,
        suite: &str,
        version: u32,
        hash: &str,
        cases: usize,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO run_suites (run_id, suite, suite_version, suite_hash, cases) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(suite)
        .bind(version as i64)
        .bind(hash)
        .bind(cases as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores one case result, its checks and its requests, atomically.
    pub async fn record_case(&self, run_id: i64, case: &CaseRecord) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO case_results (run_id, suite, case_id, sample, category, must_pass, passed,
                 score, turns, tool_calls, wall_ms, error, scorer_version, transcript_json, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             RETURNING id",
        )
        .bind(run_id)
        .bind(&case.suite)
        .bind(&case.case_id)
        .bind(case.sample as i64)
        .bind(&case.category)
        .bind(case.must_pass)
        .bind(case.passed)
        .bind(case.score)
        .bind(case.turns as i64)
        .bind(case.tool_calls as i64)
        .bind(case.wall_ms)
        .bind(&case.error)
        .bind(&case.scorer_version)
        .bind(case.transcript.to_string())
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        insert_checks(&mut tx, id, &case.checks).await?;
        for (position, r) in case.requests.iter().enumerate() {
            sqlx::query(
                "INSERT INTO requests (case_result_id, position, ttft_ms, e2e_ms, input_tokens,
                     cache_read_input_tokens, cache_creation_input_tokens, output_tokens,
                     prefill_tok_s, decode_tok_s, stop_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(id)
            .bind(position as i64)
            .bind(r.ttft_ms)
            .bind(r.e2e_ms)
            .bind(r.input_tokens as i64)
            .bind(r.cache_read_input_tokens as i64)
            .bind(r.cache_creation_input_tokens as i64)
            .bind(r.output_tokens as i64)
            .bind(r.prefill_tok_s)
            .bind(r.decode_tok_s)
            .bind(&r.stop_reason)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Replaces a case result's score and checks (re-scoring a stored transcript).
    pub async fn rescore_case(
        &self,
        case_result_id: i64,
        passed: bool,
        score: f64,
        scorer_version: &str,
        checks: &[CheckRecord],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE case_results SET passed = $1, score = $2, scorer_version = $3 WHERE id = $4",
        )
        .bind(passed)
        .bind(score)
        .bind(scorer_version)
        .bind(case_result_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM check_results WHERE case_result_id = $1")
            .bind(case_result_id)
            .execute(&mut *tx)
            .await?;
        insert_checks(&mut tx, case_result_id, checks).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a run with `status`.
    pub async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        peak_memory_bytes: Option<u64>,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET status = $1, finished_at = $2, error = COALESCE($3, error),
                 peak_memory_bytes = COALESCE($4, peak_memory_bytes) WHERE id = $5",
        )
        .bind(status)
        .bind(now())
        .bind(error)
        .bind(peak_memory_bytes.map(|b| b as i64))
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        // The status is written: the lock has nothing left to say.
        let held = self
            .held
            .lock()
            .map_err(|_| anyhow::anyhow!("the run-lock table was poisoned"))?
            .remove(&run_id);
        match (held, &self.backend) {
            (Some(RunLock::File(file)), Backend::Sqlite { locks_dir }) => {
                // Removed while still locked: no reader sees the file free.
                let _ = std::fs::remove_file(Self::lock_path(locks_dir, run_id));
                drop(file);
            }
            // Unlocked on the server before this returns: closing the
            // connection alone releases it only once the server has seen
            // the disconnect, so a reader right after could find it held.
            (Some(RunLock::Session(mut conn)), _) => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                    .bind(ADVISORY_LOCK_CLASS)
                    .bind(advisory_key(run_id)?)
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, limit: u32) -> Result<Vec<RunRow>> {
        let rows = sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        self.runs_from_rows(&rows).await
    }

    /// One run.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let row = sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.run_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    /// The newest run, optionally with `label`, and optionally complete only.
    pub async fn latest_run(&self, label: Option<&str>) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT id FROM runs WHERE status = 'complete' AND ($1 IS NULL OR label = $1)
             ORDER BY id DESC LIMIT 1",
        )
        .bind(label)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Complete runs of `model` through `target`, newest first.
    pub async fn complete_runs_of(&self, model: &str, target: &str) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(
            "SELECT * FROM runs WHERE status = 'complete' AND model = $1 AND target = $2
             ORDER BY id DESC",
        )
        .bind(model)
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        self.runs_from_rows(&rows).await
    }

    /// Stores a qualification verdict (against the newest run it used).
    pub async fn record_qualification(&self, verdict: &Verdict) -> Result<i64> {
        let run_id = verdict
            .run_ids
            .iter()
            .max()
            .context("a verdict with no run cannot be stored")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO qualifications (run_id, profile, model, qualified, gates_json, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id",
        )
        .bind(run_id)
        .bind(&verdict.profile)
        .bind(&verdict.model)
        .bind(verdict.qualified)
        .bind(serde_json::to_string(&verdict.gates)?)
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The newest verdict per model and profile.
    pub async fn latest_qualifications(&self) -> Result<Vec<StoredVerdict>> {
        let rows = sqlx::query(
            "SELECT * FROM qualifications WHERE id IN
                 (SELECT MAX(id) FROM qualifications GROUP BY model, profile)
             ORDER BY model, profile",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredVerdict {
                id: row.get("id"),
                run_id: row.get("run_id"),
                profile: row.get("profile"),
                model: row.get("model"),
                qualified: flag(&row, "qualified"),
                gates: serde_json::from_str(&row.get::<String, _>("gates_json"))
                    .unwrap_or_default(),
                created_at: row.get("created_at"),
            })
            .collect())
    }

    /// A run id from a selector: a number, `latest` (the newest complete run)
    /// or `latest:LABEL`.
    pub async fn resolve_run(&self, selector: &str) -> Result<i64> {
        if let Ok(id) = selector.parse::<i64>() {
            return match self.run(id).await? {
                Some(_) => Ok(id),
                None => anyhow::bail!("no run {id} in this database"),
            };
        }
        let label = match selector.strip_prefix("latest") {
            Some("") => None,
            Some(rest) => Some(rest.strip_prefix(':').with_context(|| {
                format!("`{selector}`: expected a run id, latest or latest:LABEL")
            })?),
            None => anyhow::bail!("`{selector}`: expected a run id, latest or latest:LABEL"),
        };
        self.latest_run(label).await?.with_context(|| match label {
            Some(label) => format!("no complete run labelled `{label}`"),
            None => "no complete run in this database".to_string(),
        })
    }

    /// Every case result of a run, in the order stored, with checks and requests.
    pub async fn cases(&self, run_id: i64) -> Result<Vec<StoredCase>> {
        let rows = sqlx::query("SELECT * FROM case_results WHERE run_id = $1 ORDER BY id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        let mut cases = Vec::new();
        for row in rows {
            let id: i64 = row.get("id");
            let checks = sqlx::query(
                "SELECT * FROM check_results WHERE case_result_id = $1 ORDER BY position",
            )
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|c| CheckRecord {
                kind: c.get("kind"),
                passed: flag(&c, "passed"),
                score: c.get("score"),
                detail: parse_json(c.get("detail_json")),
            })
            .collect();
            let requests =
                sqlx::query("SELECT * FROM requests WHERE case_result_id = $1 ORDER BY position")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(request_from_row)
                    .collect();
            cases.push(StoredCase {
                id,
                record: CaseRecord {
                    suite: row.get("suite"),
                    case_id: row.get("case_id"),
                    sample: row.get::<i64, _>("sample") as u32,
                    category: row.get("category"),
                    must_pass: flag(&row, "must_pass"),
                    passed: flag(&row, "passed"),
                    score: row.get("score"),
                    turns: row.get::<i64, _>("turns") as u32,
                    tool_calls: row.get::<i64, _>("tool_calls") as u32,
                    wall_ms: row.get("wall_ms"),
                    error: row.get("error"),
                    scorer_version: row.get("scorer_version"),
                    transcript: parse_json(row.get("transcript_json")),
                    checks,
                    requests,
                },
            });
        }
        Ok(cases)
    }

    /// The underlying pool (for read-only queries elsewhere, e.g. the dashboard).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn runs_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<RunRow>> {
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            runs.push(self.run_from_row(row).await?);
        }
        Ok(runs)
    }

    async fn run_from_row(&self, row: &AnyRow) -> Result<RunRow> {
        let id: i64 = row.get("id");
        let suites = sqlx::query("SELECT * FROM run_suites WHERE run_id = $1 ORDER BY suite")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|s| SuiteRow {
                suite: s.get("suite"),
                version: s.get("suite_version"),
                hash: s.get("suite_hash"),
                cases: s.get("cases"),
            })
            .collect();
        Ok(RunRow {
            id,
            status: row.get("status"),
            label: row.get("label"),
            target: row.get("target"),
            model: row.get("model"),
            model_sha256: row.get("model_sha256"),
            engine_version: row.get("engine_version"),
            git_sha: row.get("git_sha"),
            scorer_version: row.get("scorer_version"),
            sampling: parse_json(row.get("sampling_json")),
            seed: row.get("seed"),
            repeat: row.get("repeat"),
            concurrency: row.get("concurrency"),
            host: parse_json(row.get("host_json")),
            host_fingerprint: row.get("host_fingerprint"),
            peak_memory_bytes: row.get("peak_memory_bytes"),
            git_branch: row.get("git_branch"),
            git_commit: row.get("git_commit"),
            pr_number: row.get("pr_number"),
            error: row.get("error"),
            pid: row.get("pid"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            suites,
        })
    }
}

async fn insert_checks(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    case_result_id: i64,
    checks: &[CheckRecord],
) -> Result<()> {
    for (position, check) in checks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO check_results (case_result_id, position, kind, passed, score, detail_json)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(case_result_id)
        .bind(position as i64)
        .bind(&check.kind)
        .bind(check.passed)
        .bind(check.score)
        .bind(check.detail.to_string())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A flag column: BOOLEAN on PostgreSQL, 0/1 INTEGER on SQLite.
pub(crate) fn flag(row: &AnyRow, column: &str) -> bool {
    row.try_get::<bool, _>(column)
        .or_else(|_| row.try_get::<i64, _>(column).map(|v| v != 0))
        .unwrap_or_else(|e| panic!("column {column} is not a flag: {e}"))
}

/// A request's figures from a `requests` row.
pub(crate) fn request_from_row(r: &AnyRow) -> RequestMetrics {
    RequestMetrics {
        ttft_ms: r.get("ttft_ms"),
        e2e_ms: r.get("e2e_ms"),
        input_tokens: r.get::<i64, _>("input_tokens") as u64,
        cache_read_input_tokens: r.get::<i64, _>("cache_read_input_tokens") as u64,
        cache_creation_input_tokens: r.get::<i64, _>("cache_creation_input_tokens") as u64,
        output_tokens: r.get::<i64, _>("output_tokens") as u64,
        prefill_tok_s: r.get("prefill_tok_s"),
        decode_tok_s: r.get("decode_tok_s"),
        stop_reason: r.get("stop_reason"),
    }
}

fn parse_json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Now, RFC 3339 in UTC with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration_files(backend: &str) -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    fn embedded(migrations: &[(i64, &str, &str)]) -> Vec<(String, String)> {
        migrations
            .iter()
            .map(|(version, description, sql)| {
                // sqlx names a migration by its file name, `_` read as a space.
                let name = description.replace(' ', "_");
                (format!("{version:04}_{name}.sql"), sql.to_string())
            })
            .collect()
    }

    /// A new file in `migrations/sqlite` or `migrations/postgres` must be
    /// embedded too, and both databases must have the same history.
    #[test]
    fn every_migration_file_is_embedded_for_both_databases() {
        assert_eq!(migration_files("sqlite"), embedded(&SQLITE_MIGRATIONS));
        assert_eq!(migration_files("postgres"), embedded(&POSTGRES_MIGRATIONS));
        let names = |files: Vec<(String, String)>| -> Vec<String> {
            files.into_iter().map(|(name, _)| name).collect()
        };
        assert_eq!(
            names(migration_files("sqlite")),
            names(migration_files("postgres"))
        );
    }
}
