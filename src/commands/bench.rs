//! `showdown bench`: pp512 / pp2048 / tg128 per model, in llama-bench's
//! table shape, with total and active parameters and resident memory.

use anyhow::Result;
use showdown::{
    describe_bench_model, load_engine, mib, resolve_model, run_bench_test, BenchTest, ModelStore,
};

use showdown_engine::ResidentMemory;

use crate::cli::BenchArgs;

/// Runs `showdown bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let store = ModelStore::from_env()?;
    let models = if args.models.is_empty() {
        vec![super::model_or_default(&store, None)?]
    } else {
        args.models.clone()
    };
    let threads = candle_threads();
    let tests: Vec<BenchTest> = args
        .prompt_sizes
        .iter()
        .map(|&n| BenchTest::Prompt(n))
        .chain(args.generate_sizes.iter().map(|&n| BenchTest::Generate(n)))
        .collect();
    let mut rows = Vec::new();
    let mut described = Vec::new();
    if !args.json {
        println!(
            "| {:<16} | {:>9} | {:>8} | {:>8} | {:>10} | {:>7} | {:>13} | {:>18} |",
            "model", "size", "params", "active", "peak RSS", "threads", "test", "t/s"
        );
        println!(
            "|{:-<18}|{:->11}|{:->10}|{:->10}|{:->12}|{:->9}|{:->15}|{:->20}|",
            "", "", "", "", "", "", "", ""
        );
    }
    if !args.json {
        eprintln!("{}", showdown_engine::kernels::cpu_features());
    }
    for reference in &models {
        let model = resolve_model(reference, &store)?;
        let max_test = tests.iter().map(BenchTest::tokens).max().unwrap_or(0)
            + args.depths.iter().copied().max().unwrap_or(0);
        // Each model's peak, not the largest so far.
        ResidentMemory::reset_peak();
        let engine = load_engine(&model, None)?;
        anyhow::ensure!(
            max_test <= engine.context_length(),
            "{} has a {}-token context; a {max_test}-token test does not fit",
            model.name,
            engine.context_length()
        );
        for (&depth, &test) in args
            .depths
            .iter()
            .flat_map(|d| std::iter::repeat(d).zip(&tests))
        {
            let result =
                run_bench_test(&engine, &model.name, test, depth, args.repetitions.max(1))?;
            let info = describe_bench_model(&engine, &model.name, threads);
            if !args.json {
                println!(
                    "| {:<16} | {:>9} | {:>7.1}M | {:>7.1}M | {:>10} | {:>7} | {:>13} | {:>9.2} ± {:>6.2} |",
                    info.model,
                    mib(info.file_bytes),
                    info.total_parameters as f64 / 1e6,
                    info.active_parameters as f64 / 1e6,
                    info.peak_rss_bytes.map(mib).unwrap_or_else(|| "n/a".into()),
                    info.threads,
                    result.test,
                    result.mean_tok_s,
                    result.stddev_tok_s
                );
            }
            rows.push(result);
        }
        described.push(describe_bench_model(&engine, &model.name, threads));
    }
    if args.json {
        let out = serde_json::json!({
            "kernels": showdown_engine::kernels::cpu_features(),
            "models": described,
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The thread count candle will use.
fn candle_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
