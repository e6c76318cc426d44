//! `showdown serve`: loads the models, then serves the Messages API, and the
//! dashboard over `--db` (when that file exists) at `/dashboard`, until Ctrl-C.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use showdown::{
    dashboard_router, load_engine, resolve_model, serve, serve_with, AppState, ModelStore,
    PromptCacheConfig, ServeConfig,
};

use crate::cli::ServeArgs;

/// Runs `showdown serve`.
pub fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let store = ModelStore::from_env()?;
    let references = if args.models.is_empty() {
        vec![super::model_or_default(&store, None)?]
    } else {
        args.models.clone()
    };
    let mut engines = Vec::new();
    for reference in &references {
        let model = resolve_model(reference, &store)?;
        let engine = load_engine(&model, args.ctx)?;
        eprintln!(
            "loaded {} ({}, context {} tokens)",
            model.name,
            engine.info().architecture,
            engine.context_length()
        );
        engines.push((model, engine));
    }
    let mut aliases = Vec::new();
    for alias in &args.aliases {
        let Some((pattern, name)) = alias.split_once('=') else {
            bail!("--alias takes PATTERN=NAME, got `{alias}`");
        };
        if !engines.iter().any(|(m, _)| m.name == name) {
            bail!("--alias {alias}: `{name}` is not a served model");
        }
        aliases.push((pattern.to_string(), name.to_string()));
    }
    let config = ServeConfig {
        addr: args.addr,
        api_key: args.api_key,
        aliases,
        cache: PromptCacheConfig {
            enabled: !args.no_prefix_cache,
            slots: args.cache_slots,
            budget_bytes: args.cache_mib << 20,
        },
        queue_depth: args.queue,
        max_body_bytes: args.max_body_mib << 20,
        log_prompts: args.log_prompts,
        allowed_hosts: args.allowed_hosts.clone(),
    };
    let addr = config.addr;
    let api_key = config.api_key.clone();
    let state = Arc::new(AppState::new(config, engines)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            // Serving the API must not leave a database file behind: the
            // dashboard is mounted only over one that `showdown run` wrote.
            if !args.db.may_hold_results() {
                eprintln!(
                    "no results database at {}: serving without the dashboard (--db names one)",
                    args.db
                );
                return serve(state).await;
            }
            let dashboard =
                super::dashboard::state(&args.db, addr, api_key, &args.allowed_hosts).await?;
            serve_with(state, dashboard_router(dashboard)).await
        })
}
