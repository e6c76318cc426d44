//! `showdown dashboard`: the dashboard alone over a results database, with no
//! model loaded (the same pages `showdown serve` shows at `/dashboard`).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use showdown::{
    dashboard_standalone_router, suites_dir, CompareConfig, DashboardConfig, DashboardState,
    DbLocation, ModelStore, Store,
};

use crate::cli::DashboardArgs;

/// Runs `showdown dashboard`.
pub fn run(args: DashboardArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    anyhow::ensure!(
        args.db.may_hold_results(),
        "no results database at {} (`showdown run` writes one; --db names another)",
        args.db
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let state = state(&args.db, args.addr, args.api_key, &args.allowed_hosts).await?;
            let listener = tokio::net::TcpListener::bind(args.addr)
                .await
                .with_context(|| format!("binding {}", args.addr))?;
            eprintln!(
                "dashboard at http://{}/dashboard ({})",
                listener.local_addr()?,
                args.db
            );
            axum::serve(listener, dashboard_standalone_router(state))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("serving")
        })
}

/// The dashboard over `db`, with the thresholds `showdown compare` uses.
pub async fn state(
    db: &DbLocation,
    addr: SocketAddr,
    api_key: Option<String>,
    allowed_hosts: &[String],
) -> Result<DashboardState> {
    let default_thresholds = suites_dir()?.join("compare.toml");
    let compare = if default_thresholds.is_file() {
        CompareConfig::load(&default_thresholds)?
    } else {
        CompareConfig::default()
    };
    DashboardState::new(DashboardConfig {
        store: Store::connect(db).await?,
        // Without a models file or cache the models page lists what runs used.
        models: ModelStore::from_env().ok(),
        compare,
        api_key,
        addr,
        allowed_hosts: allowed_hosts.to_vec(),
    })
}
