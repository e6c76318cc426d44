//! Identifiers in Anthropic's shapes: `msg_…`, `toolu_…`, `req_…`.

use rand::distr::{Alphanumeric, SampleString};

fn id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24)
    )
}

/// A message id.
pub fn message_id() -> String {
    id("msg_")
}

/// A tool-use id.
pub fn tool_use_id() -> String {
    id("toolu_")
}

/// A request id.
pub fn request_id() -> String {
    id("req_")
}
