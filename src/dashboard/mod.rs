//! The dashboard: read-only HTML pages over the results database, so the team
//! sees at a glance whether the engine and the models get better or worse run
//! after run, plus the JSON behind every page under `/api/` for scripts.
//!
//! Pages are server-rendered minijinja templates (`templates/dashboard/`,
//! embedded in the binary, HTML-escaped) with SVG charts built on the server
//! ([`charts`]): they work offline, with no CDN and no JavaScript. The router
//! is composed per page area; `showdown dashboard` serves it alone and
//! `showdown serve` mounts it next to the Messages API.
//!
//! With an API key and a listen address that is not loopback, every page and
//! JSON route asks for the key (`x-api-key`, `Authorization: Bearer`, or
//! `?key=` once, which sets a cookie for the browser). The cookie is not the
//! key nor derived from it alone: it is an expiry time signed with a secret
//! drawn when the server starts (HMAC-SHA256), good for [`COOKIE_MAX_AGE`]
//! on the dashboard only; a restart signs everyone out. Every route refuses
//! a foreign `Host` or `Origin` ([`crate::host_check`]).

mod charts;
mod compare;
mod history;
mod models;
mod overview;
mod runs;
mod trends;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::host_check::{check_host, AllowedHosts};
use crate::models::ModelStore;
use crate::report::CompareConfig;
use crate::store::Store;

/// The pages' templates, under `templates/dashboard/` (embedded, or from
/// `--templates-dir`; see [`crate::assets::template`]).
const TEMPLATES: [&str; 8] = [
    "base.html.j2",
    "macros.html.j2",
    "overview.html.j2",
    "trends.html.j2",
    "run.html.j2",
    "compare.html.j2",
    "models.html.j2",
    "error.html.j2",
];

/// The cookie a browser keeps its signed pass in after `?key=`.
const KEY_COOKIE: &str = "showdown_key";

/// How long a dashboard cookie is good for, in seconds.
pub const COOKIE_MAX_AGE: u64 = 12 * 60 * 60;

/// What a cookie's signature covers besides its expiry, so a MAC made for
/// anything else under the same secret never passes.
const COOKIE_CONTEXT: &[u8] = b"showdown dashboard cookie v2\n";

/// What the dashboard needs to answer.
#[derive(Clone)]
pub struct DashboardState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    models: Option<ModelStore>,
    compare: CompareConfig,
    /// The key's sha256, when requests must present the key.
    required_key_hash: Option<[u8; 32]>,
    /// Signs and checks the cookies of this process.
    cookie_secret: [u8; 32],
    allowed_hosts: Arc<AllowedHosts>,
}

/// How the dashboard is set up.
pub struct DashboardConfig {
    /// The results database (opened by the caller).
    pub store: Store,
    /// The pinned models, for the models page (none: only what runs recorded).
    pub models: Option<ModelStore>,
    /// Thresholds of the comparisons and the regression markers.
    pub compare: CompareConfig,
    /// The server's API key, if it has one.
    pub api_key: Option<String>,
    /// Where the server listens: on loopback the key is not asked for.
    pub addr: SocketAddr,
    /// Host names served beyond loopback names and IP addresses.
    pub allowed_hosts: Vec<String>,
}

impl DashboardState {
    /// Builds the state (and checks the embedded templates parse).
    pub fn new(config: DashboardConfig) -> anyhow::Result<Self> {
        environment().map_err(|f| anyhow::anyhow!(f.message))?;
        let required_key_hash = config
            .api_key
            .filter(|_| !config.addr.ip().is_loopback())
            .map(|key| key_hash(&key));
        Ok(Self {
            inner: Arc::new(Inner {
                store: config.store,
                models: config.models,
                compare: config.compare,
                required_key_hash,
                cookie_secret: rand::random(),
                allowed_hosts: Arc::new(AllowedHosts::new(&config.allowed_hosts)),
            }),
        })
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Renders a page template with `context`.
    fn render(&self, name: &str, context: impl Serialize) -> Result<Html<String>, Failure> {
        render(name, context)
    }
}

/// The embedded templates, parsed once.
fn environment() -> Result<&'static Environment<'static>, Failure> {
    static ENVIRONMENT: std::sync::OnceLock<Result<Environment<'static>, String>> =
        std::sync::OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| templates().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Failure::internal)
}

/// Renders an embedded template with `context`.
fn render(name: &str, context: impl Serialize) -> Result<Html<String>, Failure> {
    environment()?
        .get_template(name)
        .map_err(Failure::internal)?
        .render(context)
        .map(Html)
        .map_err(Failure::internal)
}

/// The template environment: HTML escaping for every `.html.j2` template, and
/// the number filters the pages use.
pub fn templates() -> anyhow::Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html.j2") || name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.add_filter("num", filters::num);
    env.add_filter("pct", filters::pct);
    env.add_filter("signed_pct", filters::signed_pct);
    env.add_filter("pval", filters::pval);
    env.add_filter("mib", filters::mib);
    env.add_filter("params", filters::params);
    env.add_filter("short", filters::short);
    env.add_filter("pretty_json", filters::pretty_json);
    env.add_filter("gate_value", crate::report::gate_value);
    for name in TEMPLATES {
        let source = crate::assets::template(&format!("dashboard/{name}"))?;
        match source {
            std::borrow::Cow::Borrowed(text) => env.add_template(name, text),
            std::borrow::Cow::Owned(text) => env.add_template_owned(name, text),
        }
        .map_err(|e| anyhow::anyhow!("template dashboard/{name}: {e:#}"))?;
    }
    Ok(env)
}

/// Every page and JSON route, under the key check.
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .merge(overview::router())
        .merge(trends::router())
        .merge(runs::router())
        .merge(compare::router())
        .merge(models::router())
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("/dashboard") }),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(middleware::from_fn_with_state(
            state.inner.allowed_hosts.clone(),
            check_host,
        ))
        .with_state(state)
}

/// [`router`] plus `/` leading to the overview, for `showdown dashboard`.
pub fn standalone_router(state: DashboardState) -> Router {
    router(state).route("/", get(|| async { Redirect::temporary("/dashboard") }))
}

/// A failure, shown as an error page or as JSON by the route that hit it.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Details go to the log, not to the page.
    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("dashboard: {err:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (see the server's log)",
        )
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(format!("{err:#}"))
    }
}

/// A [`Failure`] on a JSON route: `{"error": {"status", "message"}}`.
pub struct JsonFailure(Failure);

impl From<Failure> for JsonFailure {
    fn from(f: Failure) -> Self {
        Self(f)
    }
}

impl IntoResponse for JsonFailure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "status": self.0.status.as_u16(), "message": self.0.message }
        });
        (self.0.status, Json(body)).into_response()
    }
}

/// A [`Failure`] on a page: the error page.
pub struct PageFailure(Failure);

impl From<Failure> for PageFailure {
    fn from(f: Failure) -> Self {
        Self(f)
    }
}

impl IntoResponse for PageFailure {
    fn into_response(self) -> Response {
        let Failure { status, message } = self.0;
        let page = render(
            "error.html.j2",
            minijinja::context! { status => status.as_u16(), message => &message },
        )
        .map_or(message, |html| html.0);
        (status, Html(page)).into_response()
    }
}

/// A query string, or a 400 that says what was wrong with it.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    query
        .map(|Query(q)| q)
        .map_err(|e| Failure::bad_request(format!("bad query: {}", e.body_text())))
}

/// The id a run selector means (an id, `latest`, `latest:LABEL`): 400 when it
/// is none of these, 404 when no such run is stored.
async fn resolve_run(store: &Store, selector: &str) -> Result<i64, Failure> {
    let selector = selector.trim();
    let well_formed = selector.parse::<i64>().is_ok()
        || selector == "latest"
        || selector
            .strip_prefix("latest:")
            .is_some_and(|l| !l.is_empty());
    if !well_formed {
        return Err(Failure::bad_request(format!(
            "`{selector}`: expected a run id, latest or latest:LABEL"
        )));
    }
    store
        .resolve_run(selector)
        .await
        .map_err(|e| Failure::not_found(format!("{e:#}")))
}

fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request presents to open the dashboard.
enum Presented {
    /// The key itself (its sha256), from a header or `?key=` (`from_query`).
    Key {
        hash: [u8; 32],
        from_query: bool,
    },
    /// A cookie: whether it is one of ours and unexpired.
    Cookie {
        valid: bool,
    },
    Nothing,
}

fn presented(headers: &HeaderMap, query: Option<&str>, secret: &[u8; 32]) -> Presented {
    let header_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    if let Some(key) = header_key {
        return Presented::Key {
            hash: key_hash(key),
            from_query: false,
        };
    }
    let query_key = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "key")
            .map(|(_, value)| percent_decode(value))
    });
    if let Some(key) = query_key {
        return Presented::Key {
            hash: key_hash(&key),
            from_query: true,
        };
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == KEY_COOKIE)
        .map(|(_, value)| value);
    match cookie {
        Some(value) => Presented::Cookie {
            valid: cookie_is_valid(secret, value, unix_now()),
        },
        None => Presented::Nothing,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cookie_mac(secret: &[u8; 32], expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(COOKIE_CONTEXT);
    mac.update(expires.to_string().as_bytes());
    mac
}

/// `EXPIRES.MAC`: a Unix time and its HMAC-SHA256 under `secret`.
fn cookie_value(secret: &[u8; 32], now: u64) -> String {
    let expires = now + COOKIE_MAX_AGE;
    let tag = cookie_mac(secret, expires).finalize().into_bytes();
    format!("{expires}.{}", hex::encode(tag))
}

/// Whether `value` was signed by this process and has not expired (nor
/// claims to outlive the longest lifetime this process hands out).
fn cookie_is_valid(secret: &[u8; 32], value: &str, now: u64) -> bool {
    let Some((expires, tag)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), hex::decode(tag)) else {
        return false;
    };
    if expires <= now || expires > now.saturating_add(COOKIE_MAX_AGE) {
        return false;
    }
    cookie_mac(secret, expires).verify_slice(&tag).is_ok()
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path and query of `uri` less its `key` parameter.
fn without_key(uri: &axum::http::Uri) -> String {
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("key"))
        .collect();
    if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    }
}

/// Asks for the key when the dashboard was set up to.
async fn require_key(
    State(state): State<DashboardState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.inner.required_key_hash else {
        return next.run(request).await;
    };
    let given = presented(
        request.headers(),
        request.uri().query(),
        &state.inner.cookie_secret,
    );
    let is_api = request.uri().path().starts_with("/api/");
    let message = match given {
        Presented::Key { hash, from_query } if constant_time_eq(&hash, &expected) => {
            if !from_query {
                return next.run(request).await;
            }
            // A browser: remember a signed pass so links and forms work
            // without the key, and take the key out of the address bar (and
            // the history).
            let mut response = if is_api {
                next.run(request).await
            } else {
                Redirect::to(&without_key(request.uri())).into_response()
            };
            let cookie = format!(
                "{KEY_COOKIE}={}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Strict",
                cookie_value(&state.inner.cookie_secret, unix_now())
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            return response;
        }
        Presented::Cookie { valid: true } => return next.run(request).await,
        Presented::Key { .. } => "invalid key",
        Presented::Cookie { valid: false } => {
            "your dashboard session has expired or is not valid: give the key again"
        }
        Presented::Nothing => "this dashboard needs the server's API key",
    };
    let failure = Failure::new(StatusCode::UNAUTHORIZED, message);
    if is_api {
        return JsonFailure(failure).into_response();
    }
    let page = state
        .render(
            "error.html.j2",
            minijinja::context! { status => 401, message => message, ask_key => true },
        )
        .map(|html| html.0)
        .unwrap_or_else(|_| message.to_string());
    (StatusCode::UNAUTHORIZED, Html(page)).into_response()
}

/// Number formatting for the templates; `–` wherever a figure is missing.
mod filters {
    use minijinja::Value;

    fn float(value: &Value) -> Option<f64> {
        if value.is_none() || value.is_undefined() {
            return None;
        }
        f64::try_from(value.clone()).ok().filter(|v| v.is_finite())
    }

    /// A figure with `digits` decimals (default 1).
    pub fn num(value: Value, digits: Option<usize>) -> String {
        float(&value).map_or("–".into(), |v| format!("{v:.*}", digits.unwrap_or(1)))
    }

    /// A ratio as a percentage: 0.75 → `75%`.
    pub fn pct(value: Value) -> String {
        float(&value).map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
    }

    /// A percentage change, signed: `+30.2%`.
    pub fn signed_pct(value: Value) -> String {
        float(&value).map_or("–".into(), |v| format!("{v:+.1}%"))
    }

    /// A p-value: four decimals, or `<0.0001`.
    pub fn pval(value: Value) -> String {
        match float(&value) {
            None => "–".into(),
            Some(p) if p < 1e-4 => "<0.0001".into(),
            Some(p) => format!("{p:.4}"),
        }
    }

    /// Bytes as MiB, or GiB from 1 GiB up.
    pub fn mib(value: Value) -> String {
        match float(&value) {
            None => "–".into(),
            Some(v) if v >= (1u64 << 30) as f64 => format!("{:.1} GiB", v / (1u64 << 30) as f64),
            Some(v) => format!("{:.1} MiB", v / (1u64 << 20) as f64),
        }
    }

    /// A parameter count: `134.5M`, `30.5B`.
    pub fn params(value: Value) -> String {
        match float(&value) {
            None => "–".into(),
            Some(v) if v >= 1e9 => format!("{:.1}B", v / 1e9),
            Some(v) => format!("{:.1}M", v / 1e6),
        }
    }

    /// The first 12 characters (of a hash).
    pub fn short(value: Value) -> String {
        match value.as_str() {
            Some(s) => s.chars().take(12).collect(),
            None => "–".into(),
        }
    }

    /// JSON, indented (escaped like any other text by the template).
    pub fn pretty_json(value: Value) -> String {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

/// Links between pages.
mod links {
    /// Percent-encodes a query value.
    pub fn encode(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// A run's page.
    pub fn run(id: i64) -> String {
        format!("/dashboard/runs/{id}")
    }

    /// A model and suite's trends, optionally filtered.
    pub fn trends(model: &str, suite: &str, label: Option<&str>, target: Option<&str>) -> String {
        let mut href = format!(
            "/dashboard/trends?model={}&suite={}",
            encode(model),
            encode(suite)
        );
        if let Some(label) = label {
            href += &format!("&label={}", encode(label));
        }
        if let Some(target) = target {
            href += &format!("&target={}", encode(target));
        }
        href
    }

    /// The comparison of two runs.
    pub fn compare(base: i64, head: i64) -> String {
        format!("/dashboard/compare?base={base}&head={head}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_cookie_passes_and_forged_expired_or_foreign_ones_do_not() {
        let secret = [7u8; 32];
        let now = 1_800_000_000;
        let fresh = cookie_value(&secret, now);
        assert!(cookie_is_valid(&secret, &fresh, now));
        assert!(cookie_is_valid(&secret, &fresh, now + COOKIE_MAX_AGE - 1));
        assert!(
            !cookie_is_valid(&secret, &fresh, now + COOKIE_MAX_AGE),
            "expired"
        );
        assert!(
            !cookie_is_valid(&[8u8; 32], &fresh, now),
            "another process's"
        );
        let (expires, tag) = fresh.split_once('.').unwrap();
        let later = expires.parse::<u64>().unwrap() + 3600;
        assert!(
            !cookie_is_valid(&secret, &format!("{later}.{tag}"), now),
            "an extended expiry"
        );
        let far = cookie_value(&secret, now + 10 * COOKIE_MAX_AGE);
        assert!(
            !cookie_is_valid(&secret, &far, now),
            "outlives any we hand out"
        );
        assert!(
            !cookie_is_valid(&secret, &hex::encode(key_hash("k")), now),
            "old style"
        );
        for junk in ["", ".", "1.", ".ab", "x.y", "99999999999999999999999.00"] {
            assert!(!cookie_is_valid(&secret, junk, now), "{junk:?}");
        }
    }
}
