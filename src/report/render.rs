//! Markdown for a [`Comparison`], rendered with minijinja from
//! `templates/compare.md.j2` (embedded in the binary, or from `--templates-dir`), with a few number
//! formatting filters the template uses.

use anyhow::{Context, Result};
use minijinja::{Environment, Value};

use super::compare::Comparison;
use super::qualify::Verdict;

/// The comparison as markdown (a PR comment body, a CI log).
pub fn render_markdown(comparison: &Comparison) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_filter("pct", pct);
    env.add_filter("pval", pval);
    env.add_filter("num", num);
    env.add_filter("short", short);
    let source = crate::assets::template("compare.md.j2")?;
    env.add_template("compare.md", &source)
        .context("template compare.md.j2")?;
    let text = env
        .get_template("compare.md")?
        .render(Value::from_serialize(comparison))?;
    Ok(text)
}

/// The verdicts of `showdown qualify` as markdown (a CI log, a step summary).
pub fn render_verdicts(verdicts: &[Verdict], description: &str) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_filter("gate_value", gate_value);
    let source = crate::assets::template("qualify.md.j2")?;
    env.add_template("qualify.md", &source)
        .context("template qualify.md.j2")?;
    let text = env
        .get_template("qualify.md")?
        .render(minijinja::context! {
            verdicts => Value::from_serialize(verdicts),
            description => description,
        })?;
    Ok(text)
}

/// A gate's value in its own unit: a pass rate as a percentage, a count as
/// an integer, a latency or speed with one decimal (the CLI's and the
/// dashboard's gate tables share it).
pub fn gate_value(gate: Value) -> String {
    let value = gate
        .get_attr("value")
        .ok()
        .and_then(|v| f64::try_from(v).ok());
    let kind = gate
        .get_attr("gate")
        .ok()
        .and_then(|g| g.as_str().map(str::to_string))
        .unwrap_or_default();
    match (kind.as_str(), value) {
        (_, None) => "–".into(),
        ("pass_rate", Some(v)) => format!("{:.0}%", v * 100.0),
        ("must_pass", Some(v)) => format!("{v:.0}"),
        (_, Some(v)) => format!("{v:.1}"),
    }
}

/// A signed percentage with one decimal: `+30.2%`; `–` for none.
fn pct(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:+.1}%"))
}

/// A p-value: four decimals, or `<0.0001`.
fn pval(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(p) if p < 1e-4 => "<0.0001".into(),
        Some(p) => format!("{p:.4}"),
    }
}

/// A figure with one decimal; `–` for none.
fn num(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The first 12 characters of a hash; `none` for none.
fn short(value: Option<String>) -> String {
    value.map_or("none".into(), |v| v.chars().take(12).collect())
}
