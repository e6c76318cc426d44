//! Stop sequences on streamed text: text that might be the start of a stop
//! sequence is held back, so a client never sees part of one.

/// Finds stop sequences in text that arrives in pieces.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What to do with a piece of text.
#[derive(Debug, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to emit now.
    pub emit: String,
    /// The stop sequence that matched, if any; generation should end.
    pub matched: Option<String>,
}

impl StopMatcher {
    /// A matcher for these sequences (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds text; emits what can no longer be part of a stop sequence.
    pub fn push(&mut self, text: &str) -> StopCheck {
        self.pending.push_str(text);
        // The earliest match wins, as it would for a client scanning the text.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first {
            let emit = self.pending[..at].to_string();
            let matched = Some(stop.clone());
            self.pending.clear();
            return StopCheck { emit, matched };
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck {
            emit,
            matched: None,
        }
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`,
/// on character boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_partial_stop_then_matches_it() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("hello E").emit, "hello ");
        let c = m.push("ND and more");
        assert_eq!(c.emit, "");
        assert_eq!(c.matched.as_deref(), Some("END"));
    }

    #[test]
    fn releases_a_false_alarm() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("E").emit, "");
        assert_eq!(m.push("x").emit, "Ex");
        assert_eq!(m.push("EN").emit, "");
        assert_eq!(m.finish(), "EN");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        let mut m = StopMatcher::new(&["ü!".to_string(), "b".to_string()]);
        let c = m.push("aü!b");
        assert_eq!(c.emit, "a");
        assert_eq!(c.matched.as_deref(), Some("ü!"));
    }
}
