//! `showdown bench-cache`: time to first token per turn of a five-turn agent
//! conversation, with the prompt cache on and off.

use anyhow::Result;
use showdown::{load_engine, resolve_model, run_cache_bench, ModelStore};

use crate::cli::CacheBenchArgs;

/// Runs `showdown bench-cache`.
pub fn run(args: CacheBenchArgs) -> Result<()> {
    let store = ModelStore::from_env()?;
    let reference = super::model_or_default(&store, args.model.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for prefix_cache in [true, false] {
        let model = resolve_model(&reference, &store)?;
        let engine = load_engine(&model, None)?;
        runs.push(runtime.block_on(run_cache_bench(model, engine, prefix_cache, args.turns))?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": reference, "cached": runs[0], "uncached": runs[1]})
        );
        return Ok(());
    }
    println!("prompt cache on {reference}: TTFT per turn (client side, streamed)");
    println!(
        "| turn | prompt tokens | cache read | new tokens (share) | TTFT cached (ms) | TTFT uncached (ms) | cached / uncached |"
    );
    println!("|-----:|--------------:|-----------:|-------------------:|-----------------:|-------------------:|------------------:|");
    for (cached, uncached) in runs[0].iter().zip(&runs[1]) {
        let new_tokens = cached.prompt_tokens - cached.cache_read_tokens;
        println!(
            "| {:>4} | {:>13} | {:>10} | {:>18} | {:>16.0} | {:>18.0} | {:>16.1}% |",
            if cached.side {
                "side".to_string()
            } else {
                cached.turn.to_string()
            },
            cached.prompt_tokens,
            cached.cache_read_tokens,
            format!(
                "{new_tokens} ({:.0}%)",
                100.0 * new_tokens as f64 / cached.prompt_tokens.max(1) as f64
            ),
            cached.ttft_ms,
            uncached.ttft_ms,
            100.0 * cached.ttft_ms / uncached.ttft_ms
        );
    }
    Ok(())
}
