//! `showdown models …`: list, pull, verify, locate and unpin pinned models.

use std::io::Write;

use anyhow::{bail, Context, Result};
use showdown::{resolve_model, ModelRef, ModelStatus, ModelStore, Origin, PullOutcome};

use crate::cli::ModelsCommand;

/// Runs one `models` subcommand.
pub fn run(command: ModelsCommand) -> Result<()> {
    let store = ModelStore::from_env()?;
    match command {
        ModelsCommand::List => list(&store),
        ModelsCommand::Pull { name } => pull(&store, name.as_deref()),
        ModelsCommand::Verify { reference } => verify(&store, &reference),
        ModelsCommand::Path { reference } => path(&store, &reference),
        ModelsCommand::Unpin { reference } => unpin(&store, &reference),
    }
}

/// `models list`: one line per pinned model, with its cache status.
fn list(store: &ModelStore) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<10} {:>8}  {:<20} SHA256",
        "NAME", "ARCH", "CONTEXT", "STATUS"
    )?;
    for spec in store.catalogue().models() {
        let status = match store.status(spec)? {
            ModelStatus::Present { size } => format!("present ({})", human_size(size)),
            ModelStatus::Missing => "missing".to_string(),
        };
        let name = if spec.default {
            format!("{} *", spec.name)
        } else {
            spec.name.clone()
        };
        writeln!(
            out,
            "{:<20} {:<10} {:>8}  {:<20} {}",
            name,
            spec.architecture,
            spec.context_length,
            status,
            &spec.sha256[..12]
        )?;
    }
    writeln!(out)?;
    writeln!(out, "* default model")?;
    writeln!(out, "models file: {}", store.catalogue().origin())?;
    writeln!(out, "cache: {}", store.models_dir().display())?;
    Ok(())
}

/// `models pull [NAME]`: fetch a pinned model into the cache.
fn pull(store: &ModelStore, name: Option<&str>) -> Result<()> {
    let name = match name {
        Some(name) => name,
        None => match store.catalogue().default_model() {
            Some(spec) => spec.name.as_str(),
            None => bail!("the models file marks no default model; name one to pull"),
        },
    };
    // Refuse an unknown name before announcing anything.
    store.catalogue().get(name)?;
    eprintln!("pulling {name}");
    let outcome = store
        .pull(name, &mut |step| eprintln!("  {step}"))
        .with_context(|| format!("cannot pull `{name}`"))?;
    let mut out = std::io::stdout().lock();
    match outcome {
        PullOutcome::AlreadyPresent { path } => writeln!(
            out,
            "{name} is already present at {} (sha256 verified)",
            path.display()
        )?,
        PullOutcome::Pulled { path, size } => writeln!(
            out,
            "pulled {name} ({}) to {}",
            human_size(size),
            path.display()
        )?,
    }
    Ok(())
}

/// `models verify REF`: re-hash a model against its pin.
fn verify(store: &ModelStore, reference: &str) -> Result<()> {
    let model = resolve_model(reference, store)?;
    report_new_pin(&model.origin, &model.path, &model.sha256);
    writeln!(
        std::io::stdout().lock(),
        "ok {} sha256 {} {}",
        model.name,
        model.sha256,
        model.path.display()
    )?;
    Ok(())
}

/// `models path REF`: print the path of a model whose hash matches its pin.
fn path(store: &ModelStore, reference: &str) -> Result<()> {
    let model = resolve_model(reference, store)?;
    report_new_pin(&model.origin, &model.path, &model.sha256);
    writeln!(std::io::stdout().lock(), "{}", model.path.display())?;
    Ok(())
}

/// `models unpin path:FILE`: forget a `path:` pin.
fn unpin(store: &ModelStore, reference: &str) -> Result<()> {
    let ModelRef::Path(file) = ModelRef::parse(reference)? else {
        bail!(
            "only path: models have pins to remove (listed models are pinned by the models \
             file, ollama: models by their manifest digest)"
        );
    };
    let mut out = std::io::stdout().lock();
    match store.unpin(&file)? {
        Some(hash) => writeln!(out, "unpinned {} (was sha256 {hash})", file.display())?,
        None => writeln!(
            out,
            "{} was not pinned in {}",
            file.display(),
            store.pins_file().display()
        )?,
    }
    Ok(())
}

fn report_new_pin(origin: &Origin, path: &std::path::Path, sha256: &str) {
    if let Origin::Path { newly_pinned: true } = origin {
        eprintln!("pinned {} at sha256 {sha256}", path.display());
    }
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 * 1024 {
        format!("{:.1} GiB", bytes as f64 / (MIB * 1024.0))
    } else if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{bytes} B")
    }
}
