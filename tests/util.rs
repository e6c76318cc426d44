//! Helpers shared by the integration tests: a fresh, isolated environment per test
//! and a way to run the real `showdown` binary in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A temporary directory holding everything one test touches: `home/`
/// (SHOWDOWN_HOME), `models.toml` (SHOWDOWN_MODELS_FILE, once written), `ollama/`
/// (OLLAMA_MODELS) and `tmp/` (TMPDIR), all deleted when the test ends.
pub struct TestEnv {
    dir: TempDir,
}

/// GitHub Actions' variables that showdown reads (tests clear them).
const GITHUB_VARS: [&str; 8] = [
    "GITHUB_TOKEN",
    "GITHUB_REPOSITORY",
    "GITHUB_REF",
    "GITHUB_REF_NAME",
    "GITHUB_HEAD_REF",
    "GITHUB_SHA",
    "GITHUB_API_URL",
    "GITHUB_EVENT_NAME",
];

/// The outcome of one run of the binary.
pub struct Run {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl TestEnv {
    /// A fresh environment.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("showdown-test-")
            .tempdir()
            .expect("create a temporary directory");
        std::fs::create_dir(dir.path().join("tmp")).expect("create tmp/");
        TestEnv { dir }
    }

    /// The path of `relative` inside the environment.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// SHOWDOWN_HOME.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Where pulled models are cached.
    pub fn models_dir(&self) -> PathBuf {
        self.home().join("models")
    }

    /// OLLAMA_MODELS.
    pub fn ollama_dir(&self) -> PathBuf {
        self.path("ollama")
    }

    /// TMPDIR for the binary (and the pip it runs).
    pub fn tmp_dir(&self) -> PathBuf {
        self.path("tmp")
    }

    /// Writes `contents` to `relative`, creating directories; returns the path.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).expect("create parent directory");
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Writes the models file the binary will use.
    pub fn write_models_file(&self, text: &str) {
        self.write("models.toml", text);
    }

    /// Runs `showdown ARGS` with the test's models file.
    pub fn showdown(&self, args: &[&str]) -> Run {
        let models_file = self.path("models.toml");
        assert!(models_file.exists(), "write the models file first");
        self.run(args, Some(&models_file), &[])
    }

    /// Runs `showdown ARGS` with the models file built into the binary.
    pub fn showdown_embedded(&self, args: &[&str]) -> Run {
        self.run(args, None, &[])
    }

    /// Runs `showdown ARGS` (embedded models file) with more environment.
    pub fn showdown_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        self.run(args, None, vars)
    }

    /// Runs `showdown ARGS` with the user's model cache (where the README's
    /// test command pulled the pinned models) and the embedded models file,
    /// from the environment's own directory.
    pub fn showdown_with_models(&self, args: &[&str]) -> Run {
        let mut command = self.command(None, &[]);
        command
            .env_remove("SHOWDOWN_HOME")
            .args(args)
            .current_dir(self.path(""));
        Self::finish(command)
    }

    fn run(&self, args: &[&str], models_file: Option<&Path>, vars: &[(&str, &str)]) -> Run {
        let mut command = self.command(models_file, vars);
        command.args(args);
        Self::finish(command)
    }

    fn command(&self, models_file: Option<&Path>, vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_showdown"));
        command
            .env("SHOWDOWN_HOME", self.home())
            .env("OLLAMA_MODELS", self.ollama_dir())
            .env("TMPDIR", self.tmp_dir())
            .env_remove("SHOWDOWN_DB");
        // Hermetic under GitHub Actions too: its variables fill flags.
        for var in GITHUB_VARS {
            command.env_remove(var);
        }
        command.envs(vars.iter().copied());
        match models_file {
            Some(file) => command.env("SHOWDOWN_MODELS_FILE", file),
            None => command.env_remove("SHOWDOWN_MODELS_FILE"),
        };
        command
    }

    fn finish(mut command: Command) -> Run {
        let output = command.output().expect("run the showdown binary");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts that the run succeeded.
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success\n{}", self.dump());
        self
    }

    /// Asserts that the run failed with exit code 2 and an `error:` line.
    #[track_caller]
    pub fn failure(self) -> Self {
        assert_eq!(self.code, Some(2), "expected exit code 2\n{}", self.dump());
        assert!(self.stderr.contains("error: "), "{}", self.dump());
        self
    }

    /// Asserts that stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.dump()
        );
        self
    }

    /// Asserts that stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            self.dump()
        );
        self
    }

    fn dump(&self) -> String {
        format!(
            "exit code: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The names of the entries in `dir` (hidden ones included), sorted; empty if
/// `dir` does not exist.
pub fn files_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The path of a pinned model in the user's cache, as `showdown models path`
/// prints it (the README's test command pulls the models first).
pub fn pinned_model_path(name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_showdown"))
        .args(["models", "path", name])
        .output()
        .expect("run showdown models path");
    assert!(
        out.status.success(),
        "model {name} is not pulled: run `showdown models pull {name}` ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Relative L2 distance of `a` from `b`: how far two logit vectors are apart.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    diff / b.iter().map(|y| y * y).sum::<f32>().sqrt()
}

/// Greedy generation of at most `max_tokens`, no stop sequences.
pub fn greedy(max_tokens: usize) -> showdown_engine::GenerateParams {
    showdown_engine::GenerateParams {
        max_tokens,
        sampling: showdown_engine::SamplingParams::greedy(),
        stop_sequences: vec![],
        snapshot_at: vec![],
    }
}

/// Generates from an empty cache, uncancelled, ignoring the stream.
pub fn generate_cold(
    engine: &showdown_engine::Engine,
    prompt: &[u32],
    params: &showdown_engine::GenerateParams,
) -> showdown_engine::Generation {
    engine
        .generate(
            &mut engine.new_cache(),
            prompt,
            params,
            &showdown_engine::CancelToken::new(),
            |_| {},
        )
        .expect("generate")
}

/// A loopback port free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its own id) and reaped when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A candle-transformers oracle read from a GGUF file with its `from_gguf`.
///
/// The oracle runs on candle's AVX2 kernel tier (`MISTRALRS_FORCE_AVX2=1`,
/// set for every cargo command by `.cargo/config.toml`): that tier computes
/// ggml's arithmetic, as showdown's kernels do, on every x86-64 CPU. On a CPU
/// with AVX512-VNNI candle would otherwise pick its VNNI tier, which rounds
/// the activations of Q8_0 weights to 8 bits per 256 values instead of per 32
/// (`repack_x86::quantize_lhs`): a different, coarser arithmetic, measured
/// at 2e-2 relative L2 from ggml's on the generated qwen3 file, and one the
/// oracle picks by CPU, row count and shape.
pub fn load_oracle<T>(
    path: &Path,
    from_gguf: impl FnOnce(
        candle_core::quantized::gguf_file::Content,
        &mut std::fs::File,
        &candle_core::Device,
    ) -> candle_core::Result<T>,
) -> T {
    assert_eq!(
        std::env::var("MISTRALRS_FORCE_AVX2").as_deref(),
        Ok("1"),
        "run the oracle tests through cargo, which sets MISTRALRS_FORCE_AVX2=1 (.cargo/config.toml)"
    );
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    from_gguf(content, &mut file, &candle_core::Device::Cpu).unwrap()
}

/// An oracle's logits for `tokens` at position `pos`, through its `forward`
/// (which takes the `(1, n)` token tensor).
pub fn oracle_logits(
    forward: impl FnOnce(&candle_core::Tensor, usize) -> candle_core::Result<candle_core::Tensor>,
    tokens: &[u32],
    pos: usize,
) -> Vec<f32> {
    let input = candle_core::Tensor::new(tokens, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    forward(&input, pos)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Checks ours against the oracle's logits over a run of steps (a prefill,
/// then one-token decodes). Both sum the same exact integer block products,
/// in a different f32 order: measured on the generated files, relative L2 is
/// about 1e-7 at nearly every step, and now and then a last-bit difference
/// flips one 8-bit activation rounding inside a quantized matmul, which moves
/// that step's logits by up to about 6e-3 (1.2e-3 seen on an AVX-512 Xeon,
/// 6.1e-3 on an AVX2-only EPYC). So: every step within 1e-2, over three or
/// more steps more than half of them within 1e-5 (a wrong architecture is
/// off by far more everywhere), and the same greedy token wherever the
/// oracle's top two logits are more than 1 apart.
pub fn assert_tracks_oracle_steps(what: &str, steps: &[(Vec<f32>, Vec<f32>)]) {
    let errors: Vec<f32> = steps.iter().map(|(a, b)| relative_l2(a, b)).collect();
    for (i, ((ours, theirs), err)) in steps.iter().zip(&errors).enumerate() {
        assert!(*err < 1e-2, "{what}, step {i}: relative L2 {err}");
        let mut sorted = theirs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 1.0 {
            assert_eq!(argmax(ours), argmax(theirs), "{what}, step {i}");
        }
    }
    let exact = errors.iter().filter(|&&e| e < 1e-5).count();
    assert!(
        errors.len() < 3 || 2 * exact > errors.len(),
        "{what}: only {exact} of {} steps within 1e-5: {errors:?}",
        errors.len()
    );
}

fn argmax(v: &[f32]) -> u32 {
    showdown_engine::argmax(v)
}

/// Ours against the oracle over a run of steps on a real, deep model, with
/// the engine's kernels: at every step the KL divergence of our next-token
/// distribution from the oracle's is below `max_kl` nats, and the greedy
/// token is the same wherever the oracle's top two logits are more than 1
/// apart. (Relative L2 over the whole vocabulary is the wrong yardstick
/// here: it is dominated by logits of tokens no sampler would pick.) The
/// bound is the caller's, stated with its measurement: the same model on
/// candle's kernels is bit-equal to the oracle, so what remains is the
/// kernels' summation order, which 8-bit activation rounding amplifies layer
/// after layer.
pub fn assert_near_oracle_steps(what: &str, steps: &[(Vec<f32>, Vec<f32>)], max_kl: f32) {
    for (i, (ours, theirs)) in steps.iter().enumerate() {
        let kl = kl_divergence(theirs, ours);
        assert!(kl < max_kl, "{what}, step {i}: KL {kl} nats");
        let mut sorted = theirs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 1.0 {
            assert_eq!(argmax(ours), argmax(theirs), "{what}, step {i}");
        }
    }
}

/// Ours and the oracle step by step: `prompt`, then the oracle's greedy
/// tokens one at a time, `steps` logits each.
pub fn oracle_steps(
    engine: &showdown_engine::Engine,
    mut oracle: impl FnMut(&[u32], usize) -> Vec<f32>,
    prompt: &[u32],
    steps: usize,
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut cache = engine.new_cache();
    let mut ours = engine_logits(engine, prompt, &mut cache);
    let mut theirs = oracle(prompt, 0);
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let next = argmax(&theirs);
        out.push((ours, theirs));
        if step + 1 == steps {
            break;
        }
        theirs = oracle(&[next], prompt.len() + step);
        ours = engine_logits(engine, &[next], &mut cache);
    }
    out
}

/// KL(p ‖ q) in nats between the distributions of two logit vectors:
/// how far `q`'s next-token distribution is from `p`'s.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f32 {
    let p = log_softmax(p_logits);
    let q = log_softmax(q_logits);
    p.iter()
        .zip(&q)
        .map(|(&lp, &lq)| (lp as f64).exp() * (lp - lq) as f64)
        .sum::<f64>() as f32
}

/// Log-probabilities of a logit vector.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    logits.iter().map(|&x| x - log_sum).collect()
}

/// How closely showdown follows llama.cpp's recorded greedy continuations
/// (a `fixtures/*/llama_cpp_greedy.json` made by `fixtures/llama_cpp/greedy.py`).
#[derive(Debug, Default)]
pub struct LlamaCppAgreement {
    /// Steps compared.
    pub steps: usize,
    /// Steps where showdown's greedy token is not llama.cpp's.
    pub disagreements: usize,
    /// llama.cpp's own top-two margin (nats) at the widest disagreement.
    pub widest_disagreement: f32,
    /// Largest |Δ log-probability| over llama.cpp's top tokens at any step.
    pub max_logprob_error: f32,
    /// Mean of each step's largest |Δ log-probability|.
    pub mean_logprob_error: f32,
    /// Each step's largest |Δ log-probability|, in order.
    pub step_errors: Vec<f32>,
}

/// Feeds each case's prompt, then llama.cpp's greedy tokens one at a time
/// (teacher forcing: a near-tie cannot derail the rest), and compares
/// showdown's log-probabilities with llama.cpp's top ones at every step. The
/// prompt must tokenize to llama.cpp's ids, and showdown's greedy choice may
/// differ from llama.cpp's only where llama.cpp's own top two are within
/// `near_tie` nats.
pub fn follow_llama_cpp(
    engine: &showdown_engine::Engine,
    fixture: &str,
    near_tie: f32,
) -> LlamaCppAgreement {
    let fixture: serde_json::Value = serde_json::from_str(fixture).unwrap();
    let mut agreement = LlamaCppAgreement::default();
    let mut error_sum = 0f32;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        };
        let prompt = engine
            .tokenize_prompt(case["prompt"].as_str().unwrap())
            .unwrap();
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{name}: prompt tokens");
        let tokens = ids(&case["tokens"]);
        let tops = case["top_logprobs"].as_array().unwrap();
        let mut cache = engine.new_cache();
        let mut logits = engine_logits(engine, &prompt, &mut cache);
        for (step, (&token, top)) in tokens.iter().zip(tops).enumerate() {
            let ours = log_softmax(&logits);
            let top: Vec<(usize, f32)> = top
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            let error = top
                .iter()
                .map(|&(id, lp)| (ours[id] - lp).abs())
                .fold(0f32, f32::max);
            agreement.max_logprob_error = agreement.max_logprob_error.max(error);
            agreement.step_errors.push(error);
            error_sum += error;
            agreement.steps += 1;
            if argmax(&logits) != token {
                agreement.disagreements += 1;
                let margin = top[0].1 - top[1].1;
                agreement.widest_disagreement = agreement.widest_disagreement.max(margin);
                assert!(
                    margin < near_tie,
                    "{name}, step {step}: llama.cpp picks {token} by {margin} nats, showdown {}",
                    argmax(&logits)
                );
            }
            logits = engine_logits(engine, &[token], &mut cache);
        }
    }
    agreement.mean_logprob_error = error_sum / agreement.steps.max(1) as f32;
    agreement
}

/// showdown's logits for `tokens` after what `cache` holds.
pub fn engine_logits(
    engine: &showdown_engine::Engine,
    tokens: &[u32],
    cache: &mut showdown_engine::KvCache,
) -> Vec<f32> {
    engine
        .model()
        .forward(tokens, cache)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// One English sentence as tokens, for the generated models (they borrow
/// SmolLM2's tokenizer).
pub fn committee_prompt(engine: &showdown_engine::Engine) -> Vec<u32> {
    engine
        .tokenizer()
        .encode("The committee met on Tuesday to discuss the budget, the new library and the bridge over the river.")
        .unwrap()
}

/// The fused CPU decoder (plain rows) against the same kernels run layer by
/// layer through candle's tensor operations, as the device builds run: the
/// logits after a prompt in two chunks and after each of six greedy decode
/// steps are equal bit for bit. `prompt` must have at least two tokens.
pub fn assert_fused_equals_layer_by_layer(path: &std::path::Path, prompt: &[u32]) {
    use showdown_engine::{Engine, Kernels, LoadOptions};
    let load = |kernels| {
        let options = LoadOptions {
            kernels,
            ..LoadOptions::default()
        };
        Engine::load(path, &options).expect("load")
    };
    let fused = load(Kernels::Engine);
    let layered = load(Kernels::EngineLayerByLayer);
    assert!(fused.model().runs_fused() && !layered.model().runs_fused());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (mut a, mut b) = (fused.new_cache(), layered.new_cache());
    let split = prompt.len() / 2;
    engine_logits(&fused, &prompt[..split], &mut a);
    engine_logits(&layered, &prompt[..split], &mut b);
    let mut step = prompt[split..].to_vec();
    for i in 0..7 {
        let x = engine_logits(&fused, &step, &mut a);
        let y = engine_logits(&layered, &step, &mut b);
        assert_eq!(bits(&x), bits(&y), "{}: step {i}", path.display());
        step = vec![argmax(&x)];
    }
}

/// A property's case count: `base` in CI, times `PROPTEST_SCALE` for a
/// longer run (`PROPTEST_SCALE=10` runs ten times as many of every property).
pub fn proptest_cases(base: u32) -> u32 {
    let scale = std::env::var("PROPTEST_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    base.saturating_mul(scale)
}

/// The PostgreSQL server the store's tests use: `SHOWDOWN_TEST_POSTGRES`, a
/// URL `./scripts/test` sets after starting a throwaway cluster on loopback.
pub const POSTGRES_ENV: &str = "SHOWDOWN_TEST_POSTGRES";

/// A new, empty database of its own on the test PostgreSQL server, or None
/// when `SHOWDOWN_TEST_POSTGRES=skip` says to leave PostgreSQL out. Unset, it
/// fails: a PostgreSQL test that passes without a server would prove nothing.
pub async fn postgres_database() -> Option<showdown::DbLocation> {
    use sqlx::{Connection, Executor};
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    let server = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_ENV} is unset: ./scripts/test starts a PostgreSQL cluster for these tests \
             (or set it to a server's URL, or to `skip`)"
        )
    });
    if server == "skip" {
        eprintln!("{POSTGRES_ENV}=skip: this PostgreSQL test checks nothing");
        return None;
    }
    let name = format!(
        "showdown_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("connecting to {POSTGRES_ENV} ({server}): {e}"));
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&format!("/{name}"));
    Some(url.as_str().parse().unwrap())
}
