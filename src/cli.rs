//! The command line, as clap derive types: the whole user-facing surface of
//! `showdown` in one place, with no behaviour. `main.rs` dispatches each
//! [`Command`] to one function in `commands/`.

use clap::{Parser, Subcommand};

/// Reproducible evals and CI for local models driving coding agents.
#[derive(Debug, Parser)]
#[command(name = "showdown", version, about, long_about = None)]
pub struct Cli {
    /// CPU threads for the engine (sets RAYON_NUM_THREADS; default: all cores).
    #[arg(long, short = 't', global = true, env = "SHOWDOWN_THREADS")]
    pub threads: Option<usize>,
    /// What the engine's CPU attention keeps keys and values in: f16
    /// (llama.cpp's default; half the memory) or f32.
    #[arg(long, global = true, env = "SHOWDOWN_KV_CACHE")]
    pub kv_cache: Option<showdown_engine::KvCacheType>,
    /// Suites to use instead of the built-in ones: a directory of suite
    /// files (`NAME.toml`, `qualification.toml`, `compare.toml`), with the
    /// fixtures they name under `DIR/../fixtures`, as in the repository.
    #[arg(long, global = true, env = "SHOWDOWN_SUITES_DIR", value_name = "DIR")]
    pub suites_dir: Option<std::path::PathBuf>,
    /// Templates that replace the built-in ones of the same path
    /// (`compare.md.j2`, `pr-comment.md.j2`, `dashboard/run.html.j2`, …).
    #[arg(
        long,
        global = true,
        env = "SHOWDOWN_TEMPLATES_DIR",
        value_name = "DIR"
    )]
    pub templates_dir: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pinned models: list, pull, verify and locate them.
    ///
    /// The cache lives in $SHOWDOWN_HOME/models (default: the platform cache
    /// directory); SHOWDOWN_MODELS_FILE replaces the built-in models file.
    Models {
        /// What to do with models.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate a chat answer with the local engine, streaming it, then print
    /// time to first token, prefill and decode speed and peak memory.
    Generate(GenerateArgs),
    /// Measure the engine in llama-bench's terms: pp512, pp2048, tg128.
    Bench(BenchArgs),
    /// Serve the Anthropic Messages API (with prompt caching) over the local
    /// engine, for Claude Code and the Anthropic SDKs.
    Serve(ServeArgs),
    /// Run eval suites against a target, score them and record the run in
    /// the results database. With no arguments: the default model on the default suites.
    Run(RunArgs),
    /// Stored runs: list them, show one.
    Runs {
        /// What to do with runs.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Re-score a stored run's transcripts with the current scorers.
    Rescore(RescoreArgs),
    /// Run a stored run again with the same pins, and say where transcripts differ.
    Rerun(RerunArgs),
    /// Time to first token per turn of a five-turn agent conversation through
    /// `serve`, with the prompt cache on and off.
    BenchCache(CacheBenchArgs),
    /// Compare two stored runs for quality and latency regressions; exit 1 on
    /// a regression.
    Compare(CompareArgs),
    /// Compare two runs and keep one comment on a GitHub pull request up to
    /// date with the report (posted on a regression, or always with
    /// `--always`); exit 1 on a regression.
    PrComment(PrCommentArgs),
    /// Check a qualification profile's gates for a model (running what is
    /// missing), print and store the verdict; exit 1 when not qualified.
    Qualify(QualifyArgs),
    /// Serve the read-only dashboard (trends, runs, comparisons, models) over
    /// a results database, without loading any model.
    Dashboard(DashboardArgs),
    /// Results databases: copy a history from one store to another.
    Db {
        /// What to do with the databases.
        #[command(subcommand)]
        command: DbCommand,
    },
}

/// `showdown db …`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy every finished run (suites, cases, checks, requests, verdicts)
    /// from one results database into another, under new ids; runs the
    /// target already has are skipped, so copying again adds nothing.
    ///
    /// Example: `showdown db copy sqlite:showdown.db postgres://ci@db.internal/showdown`
    Copy {
        /// The database read: a SQLite file (`sqlite:FILE` or a path) or a
        /// postgres:// URL.
        from: showdown::DbLocation,
        /// The database written (created and migrated when new).
        to: showdown::DbLocation,
        /// Print what was copied as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `showdown dashboard …`
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub addr: std::net::SocketAddr,
    /// Ask for this key (header, or `?key=` once in a browser) unless the
    /// address is loopback.
    #[arg(long, env = "SHOWDOWN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Also answer requests whose `Host` is NAME or NAME:PORT (repeatable;
    /// loopback names and IP addresses are always served, any other host
    /// name is refused against DNS rebinding).
    #[arg(
        long = "allowed-host",
        value_name = "NAME",
        env = "SHOWDOWN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
}

/// `showdown compare …`
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline: run id, `latest` or `latest:LABEL`.
    pub base: String,
    /// The candidate: run id, `latest` or `latest:LABEL`.
    pub head: String,
    /// How to compare.
    #[command(flatten)]
    pub options: CompareOptions,
    /// Print the comparison as JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

/// `showdown run …`
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Suites by name (built in, or NAME.toml in --suites-dir) or path
    /// (repeatable; default: summarize, word-limit, tool-calls).
    #[arg(long = "suite", short)]
    pub suites: Vec<String>,
    /// builtin:MODEL (showdown's own server, started for the run) or the base
    /// URL of a Messages endpoint (default: builtin:<default model>).
    #[arg(long)]
    pub target: Option<String>,
    /// The model name to request from a URL target.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Samples per case (pass@k and pass^k in the summary).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Cases in flight at once, for a target that serves many requests at
    /// once (vLLM, SGLang, a cloud API). Scores do not change; latency is
    /// then taken under load, and the run records and shows it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Seed recorded with the run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override every case's sampling temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
    /// Only cases whose SUITE/CASE id contains this.
    #[arg(long = "case")]
    pub case_filter: Option<String>,
    /// A label for the run (a branch, a PR, an experiment).
    #[arg(long)]
    pub label: Option<String>,
    /// Environment variable holding the target's API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// How long a request may wait.
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// What is under test, in git's terms.
    #[command(flatten)]
    pub git: GitArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How long each request to the target may wait, in seconds; each expiry is
/// an error recorded on its case. The defaults suit a slow local model.
#[derive(Debug, Clone, clap::Args)]
pub struct TimeoutArgs {
    /// Seconds to open the connection.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    pub connect_timeout: f64,
    /// Seconds from sending a request to the stream's first event (the
    /// model's prefill).
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    pub first_byte_timeout: f64,
    /// Seconds between two events of a started stream.
    #[arg(long, default_value_t = 120.0, value_parser = positive_seconds)]
    pub idle_timeout: f64,
}

impl TimeoutArgs {
    /// The flags as the client's timeouts.
    pub fn timeouts(&self) -> showdown::Timeouts {
        let seconds = std::time::Duration::from_secs_f64;
        showdown::Timeouts {
            connect: seconds(self.connect_timeout),
            first_byte: seconds(self.first_byte_timeout),
            idle: seconds(self.idle_timeout),
            ..showdown::Timeouts::default()
        }
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(s),
        _ => Err(format!("`{text}`: expected a positive number of seconds")),
    }
}

/// Git metadata a run records; each defaults to GitHub Actions' environment
/// (GITHUB_HEAD_REF / GITHUB_REF_NAME, GITHUB_SHA, the PR number in GITHUB_REF).
#[derive(Debug, Clone, clap::Args)]
pub struct GitArgs {
    /// Branch under test.
    #[arg(long)]
    pub git_branch: Option<String>,
    /// Commit under test.
    #[arg(long)]
    pub git_commit: Option<String>,
    /// Pull request number.
    #[arg(long)]
    pub pr: Option<u64>,
}

impl GitArgs {
    /// The flags, completed from GitHub Actions' environment.
    pub fn meta(&self) -> showdown::GitMeta {
        showdown::GitMeta {
            branch: self.git_branch.clone(),
            commit: self.git_commit.clone(),
            pr_number: self.pr,
        }
        .with_github_env()
    }
}

/// The database and thresholds of a comparison.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareOptions {
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
    /// Thresholds file (default: the suites' compare.toml when present).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Significance level of the quality and latency tests (default 0.05).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Smallest latency change flagged, as a fraction (default 0.10 = 10%).
    #[arg(long)]
    pub min_effect: Option<f64>,
    /// Compare even when suite hashes, model sha256 or host differ.
    #[arg(long)]
    pub force: bool,
    /// On a latency regression, run base and head again on this machine,
    /// interleaved (base, head, head, base, …), and keep a latency flag only
    /// if the reruns flag it too.
    #[arg(long)]
    pub confirm: bool,
    /// The base build's `showdown` for `--confirm` (default: this binary,
    /// which is only right when base and head differ in target or model).
    #[arg(long, requires = "confirm")]
    pub base_bin: Option<std::path::PathBuf>,
    /// Reruns per side for `--confirm`.
    #[arg(long, default_value_t = 2, requires = "confirm")]
    pub confirm_rounds: u32,
}

/// `showdown pr-comment …`
#[derive(Debug, clap::Args)]
pub struct PrCommentArgs {
    /// The repository, OWNER/NAME (default: GITHUB_REPOSITORY).
    #[arg(long, env = "GITHUB_REPOSITORY")]
    pub repo: String,
    /// The pull request number (default: from GITHUB_REF, refs/pull/N/merge).
    #[arg(long)]
    pub pr: Option<u64>,
    /// The baseline: run id, `latest` or `latest:LABEL`.
    #[arg(long)]
    pub base: String,
    /// The candidate: run id, `latest` or `latest:LABEL`.
    #[arg(long)]
    pub head: String,
    /// Comment even when nothing regressed.
    #[arg(long)]
    pub always: bool,
    /// The dashboard's base URL, for links to the runs and the comparison.
    #[arg(long)]
    pub dashboard_url: Option<String>,
    /// GitHub's REST API (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api: String,
    /// Print the comment instead of posting it (no token needed).
    #[arg(long)]
    pub dry_run: bool,
    /// The login whose marked comment is showdown's (default: the token's
    /// account, from GET /user; github-actions[bot] for an installation
    /// token, which may not read /user). A GitHub App comments as NAME[bot].
    #[arg(long)]
    pub comment_author: Option<String>,
    /// How to compare.
    #[command(flatten)]
    pub compare: CompareOptions,
}

/// `showdown qualify …`
#[derive(Debug, clap::Args)]
pub struct QualifyArgs {
    /// The profile (default: the file's default_profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Models to qualify (repeatable; default: the default model).
    #[arg(long = "model", short)]
    pub models: Vec<String>,
    /// Judge this stored run (id, `latest` or `latest:LABEL`) instead of
    /// finding or making runs.
    #[arg(long, conflicts_with_all = ["models", "fresh", "target"])]
    pub run: Option<String>,
    /// Run every suite again even where a current run exists.
    #[arg(long)]
    pub fresh: bool,
    /// A Messages endpoint URL instead of builtin:MODEL.
    #[arg(long)]
    pub target: Option<String>,
    /// Environment variable holding the target's API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// The qualification file (default: the suites' qualification.toml).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
    /// A label for runs made here (a branch, `nightly`).
    #[arg(long)]
    pub label: Option<String>,
    /// Seed recorded with runs made here.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How long a request of a run made here may wait.
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// What is under test, in git's terms.
    #[command(flatten)]
    pub git: GitArgs,
    /// Print the verdicts as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `showdown runs …`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List stored runs, newest first.
    List {
        /// The results database: a SQLite file (created when missing) or a
        /// postgres:// URL.
        #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
        db: showdown::DbLocation,
        /// Most runs listed.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a run: pins, host, per-suite table, per-case checks (and with
    /// --json, transcripts).
    Show {
        /// Run id, `latest` or `latest:LABEL`.
        run: String,
        /// The results database: a SQLite file (created when missing) or a
        /// postgres:// URL.
        #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
        db: showdown::DbLocation,
        /// Print JSON with every transcript.
        #[arg(long)]
        json: bool,
    },
}

/// `showdown rescore …`
#[derive(Debug, clap::Args)]
pub struct RescoreArgs {
    /// Run id, `latest` or `latest:LABEL`.
    pub run: String,
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
}

/// `showdown rerun …`
#[derive(Debug, clap::Args)]
pub struct RerunArgs {
    /// Run id, `latest` or `latest:LABEL`.
    pub run: String,
    /// The results database: a SQLite file (created when missing) or a
    /// postgres:// URL.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
    /// Environment variable holding the target's API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
}

/// `showdown bench-cache …`
#[derive(Debug, clap::Args)]
pub struct CacheBenchArgs {
    /// The model (default: the default model).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Turns of conversation.
    #[arg(long, default_value_t = 5)]
    pub turns: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `showdown serve …`
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Models to serve, by name, path:FILE.gguf or ollama:NAME[:TAG]
    /// (repeatable; default: the default model).
    #[arg(long = "model", short)]
    pub models: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Require this key in `x-api-key` or `Authorization: Bearer`.
    #[arg(long, env = "SHOWDOWN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve requested names matching PATTERN (`*` wildcards) with model NAME,
    /// e.g. `claude-*=smollm2-135m` (repeatable).
    #[arg(long = "alias", value_name = "PATTERN=NAME")]
    pub aliases: Vec<String>,
    /// Context length to serve (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Turn off prompt-prefix reuse across requests (for comparisons).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Conversations kept in the prompt cache per model.
    #[arg(long, default_value_t = 4)]
    pub cache_slots: usize,
    /// Memory the prompt cache may use per model, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub cache_mib: usize,
    /// Requests waiting per model before the server answers 529.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Log each request's rendered prompt at info level (off by default:
    /// prompts never reach the logs otherwise; keys never do).
    #[arg(long)]
    pub log_prompts: bool,
    /// Also answer requests whose `Host` is NAME or NAME:PORT (repeatable;
    /// loopback names and IP addresses are always served, any other host
    /// name is refused against DNS rebinding).
    #[arg(
        long = "allowed-host",
        value_name = "NAME",
        env = "SHOWDOWN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// The results database the dashboard (at /dashboard) shows; without
    /// that file the dashboard is not served.
    #[arg(long, default_value = "showdown.db", env = "SHOWDOWN_DB")]
    pub db: showdown::DbLocation,
}

/// `showdown generate …`
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The user message (chat-templated), or the raw prompt with --raw.
    pub prompt: String,
    /// A model name, path:FILE.gguf or ollama:NAME[:TAG] (default: the default model).
    #[arg(long, short)]
    pub model: Option<String>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A sequence that ends generation (repeatable).
    #[arg(long = "stop")]
    pub stop_sequences: Vec<String>,
    /// Context length to allow (default: the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print the figures as JSON on stderr instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `showdown bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Models to measure (default: the default model).
    #[arg(long = "model", short)]
    pub models: Vec<String>,
    /// Prompt-processing sizes, llama-bench's -p.
    #[arg(long = "pp", value_delimiter = ',', default_value = "512,2048")]
    pub prompt_sizes: Vec<usize>,
    /// Generation lengths, llama-bench's -n.
    #[arg(long = "tg", value_delimiter = ',', default_value = "128")]
    pub generate_sizes: Vec<usize>,
    /// Tokens already in the cache before each test, llama-bench's -d: a warm
    /// agent turn is `--pp 256 --tg 128 --depth 2048`.
    #[arg(
        long = "depth",
        short = 'd',
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depths: Vec<usize>,
    /// Repetitions of each test (after one warm-up).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub repetitions: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `showdown models …`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the pinned models and whether each is in the cache.
    List,
    /// Fetch a pinned model into the cache and check its sha256.
    Pull {
        /// A name from the models file (default: the default model).
        name: Option<String>,
    },
    /// Re-hash a model and check it against its pin.
    Verify {
        /// A model name, path:FILE or ollama:NAME[:TAG].
        reference: String,
    },
    /// Print the path of a model whose hash matches its pin.
    Path {
        /// A model name, path:FILE or ollama:NAME[:TAG].
        reference: String,
    },
    /// Forget the pin of a path: model, so that its next use pins it afresh.
    Unpin {
        /// path:FILE, as it was used.
        reference: String,
    },
}
