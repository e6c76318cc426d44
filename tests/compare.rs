//! `showdown compare`: the statistics against hand-computed values, and whole
//! comparisons of synthetic runs stored in a real SQLite file, through the
//! library and through the binary (exit codes 0, 1, 2).

use serde_json::{json, Value};
use showdown::{
    bootstrap_median_ratio, compare_stored, fisher_drop_p, mann_whitney, render_markdown,
    CaseRecord, CompareConfig, Comparison, HostInfo, NewRun, RequestMetrics, SplitMix64, Store,
};

use crate::util::TestEnv;

// ---- statistics -------------------------------------------------------------

#[test]
fn fisher_one_sided_p_of_a_known_table() {
    // Base 8 pass / 2 fail, head 1 pass / 5 fail: 16 samples, 9 passes, head has 6.
    // P(X ≤ 1) = [C(9,0)·C(7,6) + C(9,1)·C(7,5)] / C(16,6) = (7 + 189) / 8008.
    let p = fisher_drop_p(8, 2, 1, 5);
    assert!((p - 196.0 / 8008.0).abs() < 1e-12, "p = {p}");
    // No change: P(X ≤ 5) for N=20, K=10, n=10 (hypergeometric, computed exactly).
    assert!((fisher_drop_p(5, 5, 5, 5) - 0.671_859_100_651_670_3).abs() < 1e-12);
    // An improvement is not a drop.
    assert!((fisher_drop_p(1, 5, 8, 2) - 0.999_125_874_125_874_2).abs() < 1e-12);
    // 40/40 → 30/40: P(X ≤ 30) with 70 passes of 80.
    assert!((fisher_drop_p(40, 0, 30, 10) - 0.000_514_828_174_875_505_8).abs() < 1e-12);
    // Degenerate tables.
    assert_eq!(fisher_drop_p(0, 0, 0, 0), 1.0);
    assert_eq!(fisher_drop_p(3, 0, 3, 0), 1.0);
}

/// U by its definition: pairs where head is larger, ties counting ½.
fn u_by_pairs(head: &[f64], base: &[f64]) -> f64 {
    head.iter()
        .flat_map(|h| base.iter().map(move |b| (h, b)))
        .map(|(h, b)| {
            if h > b {
                1.0
            } else if h == b {
                0.5
            } else {
                0.0
            }
        })
        .sum()
}

#[test]
fn mann_whitney_u_and_p_of_known_samples() {
    // Fully separated: U = 0, σ² = 25·11/12, z = (12.5 − 0.5)/σ = 2.50672, p = 0.0121858.
    let t = mann_whitney(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
    assert_eq!(t.u, 0.0);
    assert!((t.z.abs() - 2.506_718_245_762_048_7).abs() < 1e-12, "{t:?}");
    assert!((t.p - 0.012_185_780_355_344_818).abs() < 1e-9, "{t:?}");
    // With ties (2 ×3, 4 ×2): the variance shrinks by Σ(t³ − t) = 24 + 6.
    let (head, base) = ([1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 4.0, 4.0, 6.0, 7.0]);
    let t = mann_whitney(&head, &base).unwrap();
    assert_eq!(t.u, u_by_pairs(&head, &base));
    assert_eq!(t.u, 5.0);
    assert!((t.p - 0.137_563_893_909_903_37).abs() < 1e-9, "{t:?}");
    // Unequal sizes, ties across the samples.
    let head = [12.5, 13.1, 15.0, 15.0, 16.2, 18.9, 21.0];
    let base = [10.2, 11.0, 12.5, 13.0, 14.1, 15.0];
    let t = mann_whitney(&head, &base).unwrap();
    assert_eq!(t.u, 35.5);
    assert!((t.p - 0.044_022_195_041_670_07).abs() < 1e-9, "{t:?}");
    // Symmetric: swapping the samples keeps p and mirrors U.
    let swapped = mann_whitney(&base, &head).unwrap();
    assert_eq!(swapped.u, 42.0 - 35.5);
    assert!((swapped.p - t.p).abs() < 1e-15);
    // Identical samples: p = 1.
    assert_eq!(mann_whitney(&[5.0; 8], &[5.0; 8]).unwrap().p, 1.0);
    assert!(mann_whitney(&[], &[1.0]).is_none());
}

/// The exact two-sided Mann–Whitney p-value by enumerating every way of
/// choosing which ranks belong to head (no ties).
fn exact_mann_whitney_p(n1: usize, n2: usize, u: f64) -> f64 {
    let n = n1 + n2;
    let mu = (n1 * n2) as f64 / 2.0;
    let (mut extreme, mut total) = (0u64, 0u64);
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize != n1 {
            continue;
        }
        total += 1;
        let rank_sum: usize = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| i + 1).sum();
        let this_u = rank_sum as f64 - (n1 * (n1 + 1)) as f64 / 2.0;
        if (this_u - mu).abs() >= (u - mu).abs() {
            extreme += 1;
        }
    }
    extreme as f64 / total as f64
}

#[test]
fn mann_whitney_normal_approximation_is_close_to_exact() {
    let mut rng = SplitMix64::new(7);
    for _ in 0..20 {
        let mut values: Vec<f64> = (0..16).map(|_| rng.next_u64() as f64).collect();
        values.dedup();
        let (head, base) = values.split_at(8);
        let t = mann_whitney(head, base).unwrap();
        let exact = exact_mann_whitney_p(8, 8, t.u);
        assert!((t.p - exact).abs() < 0.02, "normal {} exact {exact}", t.p);
    }
}

#[test]
fn bootstrap_interval_is_seeded_and_covers_the_ratio() {
    let base = noisy(1000.0, 40, 1);
    let head = noisy(1300.0, 40, 2);
    let a = bootstrap_median_ratio(&head, &base, 2000, 0.95, 0).unwrap();
    let b = bootstrap_median_ratio(&head, &base, 2000, 0.95, 0).unwrap();
    assert_eq!(a, b, "same seed, same interval");
    assert!(a.0 < 1.3 && 1.3 < a.1, "{a:?}");
    assert!(
        a.0 > 1.15,
        "a 30% slowdown's interval excludes no change: {a:?}"
    );
    let c = bootstrap_median_ratio(&head, &base, 2000, 0.95, 1).unwrap();
    assert_ne!(a, c, "another seed, another resampling");
}

// ---- synthetic runs (shared with the dashboard tests) ------------------------

/// `n` values around `center`, ±10% uniform noise, from `seed`.
pub(crate) fn noisy(center: f64, n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            center * (1.0 + 0.2 * (u - 0.5))
        })
        .collect()
}

/// What makes a run (not) comparable.
#[derive(Clone)]
pub(crate) struct Pins {
    pub sha: &'static str,
    pub cpu: &'static str,
    pub suite_hash: &'static str,
}

pub(crate) const PINS: Pins = Pins {
    sha: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    cpu: "Test CPU",
    suite_hash: "1111111111111111111111111111111111111111111111111111111111111111",
};

/// One case of a synthetic run: its verdict and one request per e2e value
/// (TTFT a fifth of it, decode speed inversely proportional).
pub(crate) struct CaseSpec {
    id: String,
    must_pass: bool,
    passed: bool,
    e2e_ms: Vec<f64>,
}

/// `cases` cases passing as `passed` says, with 4 requests each around
/// `e2e_center` ms (so 40 latency samples for 10 cases).
pub(crate) fn cases(passed: &[bool], e2e_center: f64, seed: u64) -> Vec<CaseSpec> {
    let e2e = noisy(e2e_center, passed.len() * 4, seed);
    passed
        .iter()
        .enumerate()
        .map(|(i, &passed)| CaseSpec {
            id: format!("case-{i:02}"),
            must_pass: i == 0,
            passed,
            e2e_ms: e2e[i * 4..i * 4 + 4].to_vec(),
        })
        .collect()
}

pub(crate) async fn store_run(store: &Store, pins: &Pins, label: &str, specs: &[CaseSpec]) -> i64 {
    let run = NewRun {
        label: Some(label.to_string()),
        target: "builtin:test".into(),
        model: "test-model".into(),
        model_sha256: Some(pins.sha.to_string()),
        engine_version: "0.1.0".into(),
        git_sha: None,
        scorer_version: "1".into(),
        sampling: json!({"temperature": 0.0}),
        seed: 0,
        repeat: 1,
        concurrency: 1,
        host: HostInfo {
            cpu_model: pins.cpu.to_string(),
            cores: 8,
            memory_bytes: 16 << 30,
            os: "linux test".into(),
        },
        git_branch: None,
        git_commit: None,
        pr_number: None,
    };
    store_synthetic(store, &run, "speed", pins.suite_hash, specs).await
}

/// Stores `run` with one suite whose cases are `specs`, and completes it.
async fn store_synthetic(
    store: &Store,
    run: &NewRun,
    suite: &str,
    suite_hash: &str,
    specs: &[CaseSpec],
) -> i64 {
    let id = store.create_run(run).await.unwrap();
    store
        .add_suite(id, suite, 1, suite_hash, specs.len())
        .await
        .unwrap();
    for spec in specs {
        let requests = spec
            .e2e_ms
            .iter()
            .map(|&e2e| RequestMetrics {
                ttft_ms: Some(e2e / 5.0),
                e2e_ms: e2e,
                input_tokens: 500,
                output_tokens: 41,
                prefill_tok_s: Some(500.0 / (e2e / 5.0) * 1000.0),
                decode_tok_s: Some(40.0 / (e2e * 0.8) * 1000.0),
                ..Default::default()
            })
            .collect();
        let record = CaseRecord {
            suite: suite.into(),
            case_id: spec.id.clone(),
            sample: 0,
            category: None,
            must_pass: spec.must_pass,
            passed: spec.passed,
            score: if spec.passed { 1.0 } else { 0.0 },
            turns: 1,
            tool_calls: 0,
            wall_ms: spec.e2e_ms.iter().sum(),
            error: None,
            scorer_version: "1".into(),
            transcript: json!({}),
            checks: Vec::new(),
            requests,
        };
        store.record_case(id, &record).await.unwrap();
    }
    store.finish_run(id, "complete", None, None).await.unwrap();
    id
}

pub(crate) const ALL_PASS: [bool; 10] = [true; 10];

async fn compare_ids(store: &Store, base: i64, head: i64, force: bool) -> Comparison {
    compare_stored(
        store,
        &base.to_string(),
        &head.to_string(),
        &CompareConfig::default(),
        force,
    )
    .await
    .unwrap()
}

fn metric<'a>(c: &'a Comparison, name: &str) -> &'a showdown::MetricComparison {
    c.suites[0]
        .latency
        .iter()
        .find(|m| m.metric == name)
        .unwrap()
}

#[tokio::test]
async fn identical_runs_and_same_distribution_reruns_are_never_flagged() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
    let same = store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1000.0, 1)).await;
    let c = compare_ids(&store, base, same, false).await;
    assert!(c.comparable, "{:?}", c.not_comparable_reasons);
    assert_eq!(c.verdict, "clean");
    for m in &c.suites[0].latency {
        assert_eq!(m.p, Some(1.0), "{m:?}");
        assert_eq!(m.change_pct, Some(0.0));
        assert!(!m.regressed);
    }
    // Fresh noise from the same distribution, twenty times: never a regression.
    for seed in 2..22 {
        let head = store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1000.0, seed)).await;
        let c = compare_ids(&store, base, head, false).await;
        assert_eq!(c.verdict, "clean", "seed {seed}: {:?}", c.regressions);
    }
}

#[tokio::test]
async fn a_thirty_percent_slowdown_is_always_flagged() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    for seed in 0..10 {
        let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 100 + seed)).await;
        let head = store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1300.0, 200 + seed)).await;
        let c = compare_ids(&store, base, head, false).await;
        assert_eq!(c.verdict, "regression", "seed {seed}");
        for name in ["ttft_ms", "e2e_ms", "decode_tok_s", "prefill_tok_s"] {
            let m = metric(&c, name);
            assert_eq!((m.base_n, m.head_n), (40, 40));
            assert!(m.regressed, "seed {seed}: {m:?}");
            assert!(m.p.unwrap() < 1e-6, "{m:?}");
        }
        let e2e = metric(&c, "e2e_ms");
        assert!((e2e.change_pct.unwrap() - 30.0).abs() < 8.0, "{e2e:?}");
        let (lo, hi) = e2e.ci_pct.unwrap();
        assert!(lo > 10.0 && lo < e2e.change_pct.unwrap() && hi > e2e.change_pct.unwrap());
        // Speeds fall when times rise: their change is negative, and that is bad.
        assert!(metric(&c, "decode_tok_s").change_pct.unwrap() < -15.0);
        assert!(c
            .regressions
            .iter()
            .any(|r| r.contains("speed: e2e_ms median +")));
        assert!(!c.suites[0].pass_count_dropped);
    }
}

#[tokio::test]
async fn a_five_percent_change_and_a_speed_up_are_not_flagged() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
    // Same noise, 5% slower: significant, but below the 10% minimum effect.
    let slower = store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1050.0, 1)).await;
    let c = compare_ids(&store, base, slower, false).await;
    let e2e = metric(&c, "e2e_ms");
    assert!(e2e.significant, "{e2e:?}");
    assert!(!e2e.regressed, "{e2e:?}");
    assert_eq!(c.verdict, "clean");
    // 30% faster: significant, in the good direction.
    let faster = store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 700.0, 1)).await;
    let c = compare_ids(&store, base, faster, false).await;
    assert!(metric(&c, "e2e_ms").significant);
    assert!(metric(&c, "decode_tok_s").change_pct.unwrap() > 30.0);
    assert_eq!(c.verdict, "clean", "{:?}", c.regressions);
}

#[tokio::test]
async fn quality_flips_fisher_drops_and_must_pass_cases() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
    // One ordinary case flips: listed, but 10/10 → 9/10 is no significant drop.
    let mut one = ALL_PASS;
    one[3] = false;
    let head = store_run(&store, &PINS, "pr", &cases(&one, 1000.0, 1)).await;
    let c = compare_ids(&store, base, head, false).await;
    let s = &c.suites[0];
    assert_eq!(s.flips.len(), 1);
    assert_eq!(s.flips[0].case_id, "case-03");
    assert_eq!(s.flips[0].direction, "pass_to_fail");
    assert!(!s.pass_count_dropped && s.fisher_p > 0.05, "{}", s.fisher_p);
    assert_eq!(c.verdict, "clean");
    // The must-pass case (case-00) flips: a regression on its own.
    let mut must = ALL_PASS;
    must[0] = false;
    let head = store_run(&store, &PINS, "pr", &cases(&must, 1000.0, 1)).await;
    let c = compare_ids(&store, base, head, false).await;
    assert_eq!(c.suites[0].must_pass_regressions, ["case-00"]);
    assert_eq!(c.verdict, "regression");
    assert!(c
        .regressions
        .iter()
        .any(|r| r.contains("must-pass case case-00")));
    // 10/10 → 4/10: Fisher's p = C(14,4)... well below 0.05.
    let mut many = [false; 10];
    many[0] = true;
    many[1..4].fill(true);
    let head = store_run(&store, &PINS, "pr", &cases(&many, 1000.0, 1)).await;
    let c = compare_ids(&store, base, head, false).await;
    let s = &c.suites[0];
    assert!(s.pass_count_dropped);
    assert!((s.fisher_p - fisher_drop_p(10, 0, 4, 6)).abs() < 1e-15);
    assert_eq!(s.flips.len(), 6);
    assert!(s.must_pass_regressions.is_empty());
    // And back again: fail → pass is listed, never a regression.
    let c = compare_ids(&store, head, base, false).await;
    assert!(c.suites[0]
        .flips
        .iter()
        .all(|f| f.direction == "fail_to_pass"));
    assert_eq!(c.verdict, "clean");
}

#[tokio::test]
async fn different_pins_are_not_comparable_unless_forced() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
    let variants = [
        (
            Pins {
                sha: "bbbb",
                ..PINS
            },
            "model sha256 differs",
        ),
        (
            Pins {
                cpu: "Other CPU",
                ..PINS
            },
            "host fingerprint differs",
        ),
        (
            Pins {
                suite_hash: "2222",
                ..PINS
            },
            "suite speed hash differs",
        ),
    ];
    for (pins, reason) in variants {
        let head = store_run(&store, &pins, "pr", &cases(&ALL_PASS, 1300.0, 2)).await;
        let c = compare_ids(&store, base, head, false).await;
        assert!(!c.comparable);
        assert_eq!(c.verdict, "not comparable");
        assert_eq!(
            c.not_comparable_reasons.len(),
            1,
            "{:?}",
            c.not_comparable_reasons
        );
        assert!(
            c.not_comparable_reasons[0].starts_with(reason),
            "{:?}",
            c.not_comparable_reasons
        );
        assert!(c.suites.is_empty());
        let forced = compare_ids(&store, base, head, true).await;
        assert!(forced.forced && !forced.comparable);
        assert_eq!(forced.verdict, "regression");
        let md = render_markdown(&forced).unwrap();
        assert!(
            md.contains("Compared with `--force` although not comparable"),
            "{md}"
        );
        assert!(md.contains(reason), "{md}");
    }
}

#[tokio::test]
async fn markdown_report_shows_verdict_tables_and_flips() {
    let env = TestEnv::new();
    let store = Store::open(&env.path("showdown.db")).await.unwrap();
    let base = store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
    let mut must = ALL_PASS;
    must[0] = false;
    let head = store_run(&store, &PINS, "pr", &cases(&must, 1300.0, 2)).await;
    let c = compare_ids(&store, base, head, false).await;
    let md = render_markdown(&c).unwrap();
    assert!(
        md.contains(&format!(
            "## showdown compare: run {base} → run {head}: REGRESSION"
        )),
        "{md}"
    );
    assert!(md.contains("| speed | 10/10 | 9/10 |"), "{md}");
    assert!(
        md.contains("| speed | case-00 | pass → fail | 100% | 0% | yes |"),
        "{md}"
    );
    let e2e = metric(&c, "e2e_ms");
    let row = format!(
        "| speed | e2e_ms | {:.1} | {:.1} | {:+.1}% |",
        e2e.base_median.unwrap(),
        e2e.head_median.unwrap(),
        e2e.change_pct.unwrap()
    );
    assert!(md.contains(&row), "{row}\n{md}");
    assert!(md.contains("| speed | decode_tok_s ↑ |"), "{md}");
    assert!(md.contains("<0.0001 | REGRESSION |"), "{md}");
    // A clean comparison says so, and has no regressions list.
    let c = compare_ids(&store, base, base, false).await;
    let md = render_markdown(&c).unwrap();
    assert!(md.contains(": no regression"), "{md}");
    assert!(
        !md.contains("### Regressions") && !md.contains("REGRESSION"),
        "{md}"
    );
}

// ---- the binary ---------------------------------------------------------------

/// A database with runs 1 (base), 2 (same), 3 (30% slower), 4 (other host),
/// 5 (same speed, cases 3 and 7 flipped to failing).
pub fn database(env: &TestEnv) -> String {
    let path = env.path("showdown.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&path).await.unwrap();
        store_run(&store, &PINS, "main", &cases(&ALL_PASS, 1000.0, 1)).await;
        store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1000.0, 1)).await;
        store_run(&store, &PINS, "pr", &cases(&ALL_PASS, 1300.0, 2)).await;
        let other = Pins {
            cpu: "Other CPU",
            ..PINS
        };
        store_run(&store, &other, "elsewhere", &cases(&ALL_PASS, 1000.0, 1)).await;
        let mut flaky = ALL_PASS;
        flaky[3] = false;
        flaky[7] = false;
        store_run(&store, &PINS, "flaky", &cases(&flaky, 1000.0, 1)).await;
    });
    path.to_string_lossy().into_owned()
}

#[test]
fn binary_exit_codes_follow_the_verdict() {
    let env = TestEnv::new();
    let db = database(&env);
    let compare = |args: &[&str]| {
        let mut all = vec!["compare", "--db", db.as_str()];
        all.extend_from_slice(args);
        env.showdown_embedded(&all)
    };
    compare(&["1", "2"]).success().stdout_has(": no regression");
    let run = compare(&["latest:main", "3"]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("REGRESSION") && run.stderr.contains("regression(s) found"));
    // JSON, with the same verdict.
    let run = compare(&["1", "3", "--json"]);
    assert_eq!(run.code, Some(1));
    let json: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["verdict"], "regression");
    assert_eq!(json["base"]["id"], 1);
    assert_eq!(json["suites"][0]["latency"][1]["metric"], "e2e_ms");
    assert_eq!(json["suites"][0]["latency"][1]["regressed"], true);
    // Not comparable: the report says why, and the exit code is 2.
    let run = compare(&["1", "latest:elsewhere"])
        .failure()
        .stdout_has("Not comparable")
        .stdout_has("host fingerprint differs");
    assert!(run.stderr.contains("--force"));
    compare(&["1", "4", "--force"])
        .success()
        .stdout_has("Compared with `--force`");
    // Bad selectors are errors.
    compare(&["1", "99"]).failure().stderr_has("no run 99");
    compare(&["1", "2", "--alpha", "1.5"])
        .failure()
        .stderr_has("alpha");
}

#[test]
fn thresholds_come_from_the_config_file_and_flags() {
    let env = TestEnv::new();
    let db = database(&env);
    let config = env.write("compare.toml", "min_effect = 0.5\n");
    let config = config.to_str().unwrap();
    let compare = |args: &[&str]| {
        let mut all = vec!["compare", "--db", db.as_str(), "1", "3"];
        all.extend_from_slice(args);
        env.showdown_embedded(&all)
    };
    // 30% is below a 50% minimum effect.
    compare(&["--config", config]).success();
    // The flag wins over the file.
    assert_eq!(
        compare(&["--config", config, "--min-effect", "0.2"]).code,
        Some(1)
    );
    // A tiny alpha: still flagged (p is far below it with 40 samples).
    assert_eq!(compare(&["--alpha", "0.000001"]).code, Some(1));
    let bad = env.write("bad.toml", "min_efect = 0.5\n");
    compare(&["--config", bad.to_str().unwrap()])
        .failure()
        .stderr_has("min_efect");
}

// ---- --confirm ----------------------------------------------------------------

#[test]
fn confirmation_keeps_only_flags_the_reruns_reproduce() {
    let env = TestEnv::new();
    let db = database(&env);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(std::path::Path::new(&db)).await.unwrap();
        // Runs 1 → 3 regressed (30% slower). Reruns that agree keep the flag…
        let mut kept = compare_ids(&store, 1, 3, false).await;
        let flagged = kept.regressions.len();
        assert!(flagged > 0);
        let agreeing = compare_ids(&store, 1, 3, false).await;
        kept.confirm_latency(&agreeing, vec![10, 13], vec![11, 12]);
        assert!(kept.regressed());
        assert_eq!(kept.regressions.len(), flagged);
        let confirmation = kept.confirmation.as_ref().unwrap();
        assert!(confirmation
            .reproduced
            .contains(&"speed e2e_ms".to_string()));
        assert!(confirmation.dropped.is_empty());
        // …reruns at the same speed (runs 1 and 2) drop it: clean again.
        let mut dropped = compare_ids(&store, 1, 3, false).await;
        let same = compare_ids(&store, 1, 2, false).await;
        dropped.confirm_latency(&same, vec![10, 13], vec![11, 12]);
        assert!(!dropped.regressed(), "{:?}", dropped.regressions);
        assert_eq!(dropped.verdict, "clean");
        assert!(dropped.suites[0].latency.iter().all(|m| !m.regressed));
        let confirmation = dropped.confirmation.as_ref().unwrap();
        assert!(confirmation.dropped.contains(&"speed e2e_ms".to_string()));
        let text = render_markdown(&dropped).unwrap();
        assert!(
            text.contains("not reproduced, dropped: speed e2e_ms"),
            "{text}"
        );
    });
}

const TWO_CASES: &str = r#"
name = "tiny"
version = 1
description = "Two short answers"

[defaults]
max_tokens = 12
max_turns = 1
temperature = 0.0

[[case]]
id = "arithmetic"
category = "word_limit"
prompt = "What is 2 + 2? Answer in fewer than 10 words."
[[case.check]]
kind = "max_words"
limit = 9

[[case]]
id = "colour"
category = "word_limit"
prompt = "Name a colour in one word."
[[case.check]]
kind = "max_words"
limit = 1
"#;

/// The real engine reruns both sides (ABBA) of a synthetic 30% slowdown of
/// `builtin:smollm2-135m`; at alpha 0.01 four requests a side can never be
/// significant, so the flag is dropped whatever the machine does.
#[test]
fn confirm_reruns_base_and_head_interleaved_on_the_real_engine() {
    let env = TestEnv::new();
    let suite_path = env.write("evals/tiny.toml", TWO_CASES);
    let suite = showdown::load_suite(&suite_path).unwrap();
    let sha = showdown::Catalogue::embedded()
        .unwrap()
        .get("smollm2-135m")
        .unwrap()
        .sha256
        .clone();
    let db = env.path("showdown.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(&db).await.unwrap();
        for center in [1000.0, 1300.0] {
            let run = NewRun {
                label: None,
                target: "builtin:smollm2-135m".into(),
                model: "smollm2-135m".into(),
                model_sha256: Some(sha.clone()),
                engine_version: "0.1.0".into(),
                git_sha: None,
                scorer_version: "1".into(),
                sampling: json!({}),
                seed: 0,
                repeat: 1,
                concurrency: 1,
                host: HostInfo::detect(),
                git_branch: None,
                git_commit: None,
                pr_number: None,
            };
            let specs: Vec<CaseSpec> = suite
                .cases
                .iter()
                .enumerate()
                .map(|(i, case)| CaseSpec {
                    id: case.id.clone(),
                    must_pass: false,
                    passed: true,
                    e2e_ms: noisy(center, 12, i as u64 + 1),
                })
                .collect();
            store_synthetic(&store, &run, "tiny", &suite.hash, &specs).await;
        }
    });
    let db = db.to_str().unwrap();
    // The reruns find `tiny` by name in the test's suites directory (the
    // flag reaches them through the environment).
    let suites = suite_path.parent().unwrap().to_str().unwrap().to_string();
    let compare = |extra: &[&str]| {
        let mut args = vec![
            "compare",
            "1",
            "2",
            "--db",
            db,
            "--alpha",
            "0.01",
            "--suites-dir",
            &suites,
        ];
        args.extend_from_slice(extra);
        env.showdown_with_models(&args)
    };
    // Without --confirm: a regression.
    assert_eq!(compare(&[]).code, Some(1));
    // The same build on both sides cannot confirm anything without --base-bin.
    compare(&["--confirm"])
        .failure()
        .stderr_has("pass --base-bin PATH");
    let run = compare(&[
        "--confirm",
        "--base-bin",
        env!("CARGO_BIN_EXE_showdown"),
        "--json",
    ]);
    assert_eq!(
        run.code,
        Some(0),
        "dropped, so clean\n{}{}",
        run.stdout,
        run.stderr
    );
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["verdict"], "clean");
    // ABBA: base, head, head, base.
    assert_eq!(report["confirmation"]["base_runs"], json!([3, 6]));
    assert_eq!(report["confirmation"]["head_runs"], json!([4, 5]));
    let dropped = report["confirmation"]["dropped"].as_array().unwrap();
    assert!(dropped.contains(&json!("tiny e2e_ms")), "{dropped:?}");
    // The reruns are real runs, labelled after the run they repeat.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::open(std::path::Path::new(db)).await.unwrap();
        let rerun = store.run(4).await.unwrap().unwrap();
        assert_eq!(rerun.label.as_deref(), Some("confirm:2"));
        assert_eq!(rerun.status, "complete");
        let cases = store.cases(4).await.unwrap();
        assert_eq!(cases.len(), 2);
        assert!(cases.iter().all(|c| c.record.requests[0].output_tokens > 0));
    });
}
