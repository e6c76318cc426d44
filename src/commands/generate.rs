//! `showdown generate`: one chat answer from the local engine, streamed, then
//! the figures that matter for an agent (time to first token, prefill and
//! decode speed, peak memory).

use std::io::Write;

use anyhow::Result;
use showdown::{load_engine, mib, resolve_model, GenerationReport, ModelStore};
use showdown_engine::{CancelToken, GenerateParams, SamplingParams};

use crate::cli::GenerateArgs;

/// Runs `showdown generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let store = ModelStore::from_env()?;
    let reference = super::model_or_default(&store, args.model.as_deref())?;
    let model = resolve_model(&reference, &store)?;
    let engine = load_engine(&model, args.ctx)?;
    let prompt_text = if args.raw {
        args.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        messages.push(serde_json::json!({"role": "user", "content": args.prompt}));
        engine.render_chat(&messages, None, true)?
    };
    let prompt = engine.tokenize_prompt(&prompt_text)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        stop_sequences: args.stop_sequences.clone(),
        snapshot_at: Vec::new(),
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = engine.generate(
        &mut engine.new_cache(),
        &prompt,
        &params,
        &CancelToken::new(),
        |text| {
            if write_error.is_none() {
                if let Err(e) = stdout
                    .write_all(text.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    write_error = Some(e);
                }
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(stdout)?;
    let report = GenerationReport::new(&model, &engine, &generation);
    if args.json {
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "\n[{} sha256:{}] load {:.0} ms | {} prompt tokens, ttft {:.0} ms, prefill {:.1} tok/s | {} tokens, decode {:.1} tok/s | peak RSS {} | stop: {:?}",
            report.model,
            &report.sha256[..12],
            report.load_ms,
            report.input_tokens,
            report.ttft_ms,
            report.prefill_tok_s,
            report.output_tokens,
            report.decode_tok_s,
            report.peak_rss_bytes.map(mib).unwrap_or_else(|| "n/a".into()),
            report.stop_reason,
        );
    }
    Ok(())
}
