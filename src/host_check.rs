//! Who may talk to a local server: the `Host` (and any `Origin`) of every
//! request, on the API and the dashboard alike.
//!
//! A web page the user opens can point its own host name at 127.0.0.1 (DNS
//! rebinding) and then read what the server answers, as if it were the page's
//! own origin; it can also send cross-site requests. Both carry a host name
//! the server does not know. A request is served when its `Host` is a
//! loopback name (`localhost`), an IP address literal (a rebinding page can
//! only ever send its own name, never an address), or a name the user
//! allowed (`--allowed-host`, `SHOWDOWN_ALLOWED_HOSTS`); an `Origin`, when
//! present, must pass the same test. Anything else is 403 in Anthropic's
//! error envelope, with no HTML and no CORS headers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// The host names a server answers to, beyond loopback and IP literals.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    /// Lowercase names, each with or without a `:port`.
    names: Vec<String>,
}

impl AllowedHosts {
    /// Loopback and IP literals, plus `names` (`example.lan` or
    /// `example.lan:8080`; case does not matter).
    pub fn new(names: &[String]) -> Self {
        Self {
            names: names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    /// Whether `authority` (`host[:port]`, as in a `Host` header) may be served.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let Some((host, _port)) = split_authority(&authority) else {
            return false;
        };
        if host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.names
            .iter()
            .any(|allowed| *allowed == authority || *allowed == host)
    }

    /// Why `headers` may not be served, if they may not.
    fn refusal(&self, headers: &HeaderMap, uri_host: Option<&str>) -> Option<String> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(uri_host);
        match host {
            None => return Some("a Host header is required".into()),
            Some(host) if !self.allows(host) => {
                return Some(format!(
                    "Host `{host}` is not allowed: this server answers to localhost and IP \
                     addresses; allow a name with --allowed-host {host} (or SHOWDOWN_ALLOWED_HOSTS)"
                ))
            }
            Some(_) => {}
        }
        let origin = headers.get(header::ORIGIN)?;
        let allowed = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| self.allows(authority));
        (!allowed).then(|| {
            format!(
                "cross-origin requests are refused (Origin `{}`)",
                String::from_utf8_lossy(origin.as_bytes())
            )
        })
    }
}

/// `host` and `port` of an authority (`[::1]:8080`, `localhost`), or `None`
/// when it is not one.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if host.contains(':') => Some((authority, None)),
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

/// Middleware: refuses requests whose `Host` or `Origin` is not allowed.
pub async fn check_host(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    match allowed.refusal(
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
    ) {
        Some(message) => {
            tracing::warn!(%message, path = request.uri().path(), "refused a request");
            ApiError::forbidden(message).into_response()
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_ip_literals_and_allowed_names_pass() {
        let allowed = AllowedHosts::new(&["Box.LAN".into(), "proxy.example:8443".into()]);
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "192.168.1.20:8080",
            "box.lan",
            "box.lan:9999",
            "proxy.example:8443",
        ] {
            assert!(allowed.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "proxy.example",
            "proxy.example:80",
            "",
            "user@localhost",
            "[::1",
        ] {
            assert!(!allowed.allows(host), "{host}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_even_with_a_good_host() {
        let allowed = AllowedHosts::new(&[]);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(allowed.refusal(&headers, None).is_none());
        headers.insert(header::ORIGIN, "http://localhost:8080".parse().unwrap());
        assert!(allowed.refusal(&headers, None).is_none());
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(allowed.refusal(&headers, None).is_some());
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(allowed.refusal(&headers, None).is_some());
        assert!(allowed.refusal(&HeaderMap::new(), None).is_some());
    }
}
