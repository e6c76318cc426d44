//! A run: its pins and host, the per-suite table, every case with its checks
//! (what each found, in words) and its whole transcript, tool calls and tool
//! results shown as such.

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::history::{run_qualifications, Qualification, HISTORY_LIMIT};
use super::{links, resolve_run, DashboardState, Failure, JsonFailure, PageFailure};
use crate::report::comparability;
use crate::runner::{summarize, SuiteSummary};
use crate::store::{RunRow, StoredCase};

pub(super) fn router() -> Router<DashboardState> {
    Router::new()
        .route("/dashboard/runs/{run}", get(page))
        .route("/api/runs/{run}", get(api))
}

/// A run page's data (also `/api/runs/{run}`, transcripts included).
#[derive(Debug, Serialize)]
pub struct RunPage {
    /// The run with its pins, host and suites.
    pub run: RunRow,
    /// Per-suite figures.
    pub summaries: Vec<SuiteSummary>,
    /// Every case sample.
    pub cases: Vec<CaseView>,
    /// Qualification verdicts recorded against this run.
    pub qualifications: Vec<Qualification>,
    /// The newest earlier complete run of the same model and label that is
    /// comparable with this one.
    pub previous_comparable: Option<i64>,
    /// The comparison with it.
    pub compare_href: Option<String>,
    /// Each suite's trends page.
    pub trends: Vec<SuiteLink>,
}

/// A suite with a link.
#[derive(Debug, Serialize)]
pub struct SuiteLink {
    /// Suite.
    pub suite: String,
    /// Link.
    pub href: String,
}

/// A case sample with its checks described and its transcript laid out.
#[derive(Debug, Serialize)]
pub struct CaseView {
    /// The stored result (with the raw transcript).
    #[serde(flatten)]
    pub case: StoredCase,
    /// What each check found, in words (same order as `checks`).
    pub check_notes: Vec<String>,
    /// The transcript, turn by turn.
    pub conversation: Conversation,
}

/// A transcript laid out for reading.
#[derive(Debug, Default, Serialize)]
pub struct Conversation {
    /// System prompt.
    pub system: Option<String>,
    /// Names of the tools offered.
    pub tools: Vec<String>,
    /// The user's request.
    pub prompt: Option<String>,
    /// Each model response and each round of tool results.
    pub turns: Vec<Turn>,
    /// The final answer the scorers read.
    pub final_text: String,
}

/// One step of a conversation.
#[derive(Debug, Serialize)]
pub struct Turn {
    /// Model turn, from 1.
    pub turn: i64,
    /// `response`, `tool_results` or `error`.
    pub kind: String,
    /// Its content blocks.
    pub blocks: Vec<Block>,
    /// Why the response ended.
    pub stop_reason: Option<String>,
    /// The request's figures.
    pub metrics: Option<Value>,
    /// What failed, for an `error` turn.
    pub error: Option<String>,
}

/// A content block.
#[derive(Debug, Serialize)]
pub struct Block {
    /// `text`, `tool_use`, `tool_result`, `thinking` or the block's own type.
    pub kind: String,
    /// Text, a call's input as JSON, or a result's content.
    pub text: String,
    /// The tool a call or a result is for.
    pub name: Option<String>,
    /// A tool result that is an error.
    pub is_error: bool,
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| {
                b["text"]
                    .as_str()
                    .map_or_else(|| b.to_string(), str::to_string)
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Lays out the agent loop's transcript (`conversation.exchanges`).
fn conversation(transcript: &Value) -> Conversation {
    let conv = &transcript["conversation"];
    let mut names = std::collections::HashMap::new();
    let mut turns = Vec::new();
    for exchange in conv["exchanges"].as_array().into_iter().flatten() {
        let turn = exchange["turn"].as_i64().unwrap_or(0);
        if let Some(response) = exchange.get("response") {
            let blocks = response["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let kind = b["type"].as_str().unwrap_or("other").to_string();
                    match kind.as_str() {
                        "text" => Block {
                            text: text_of(&b["text"]),
                            kind,
                            name: None,
                            is_error: false,
                        },
                        "thinking" => Block {
                            text: text_of(&b["thinking"]),
                            kind,
                            name: None,
                            is_error: false,
                        },
                        "tool_use" => {
                            let name = b["name"].as_str().unwrap_or_default().to_string();
                            if let Some(id) = b["id"].as_str() {
                                names.insert(id.to_string(), name.clone());
                            }
                            Block {
                                text: serde_json::to_string_pretty(&b["input"]).unwrap_or_default(),
                                kind,
                                name: Some(name),
                                is_error: false,
                            }
                        }
                        _ => Block {
                            text: serde_json::to_string_pretty(b).unwrap_or_default(),
                            kind,
                            name: None,
                            is_error: false,
                        },
                    }
                })
                .collect();
            turns.push(Turn {
                turn,
                kind: "response".into(),
                blocks,
                stop_reason: response["stop_reason"].as_str().map(str::to_string),
                metrics: exchange.get("metrics").cloned(),
                error: None,
            });
        } else if let Some(results) = exchange["tool_results"].as_array() {
            let blocks = results
                .iter()
                .map(|r| Block {
                    kind: "tool_result".into(),
                    text: text_of(&r["content"]),
                    name: r["tool_use_id"]
                        .as_str()
                        .and_then(|id| names.get(id).cloned()),
                    is_error: r["is_error"].as_bool().unwrap_or(false),
                })
                .collect();
            turns.push(Turn {
                turn,
                kind: "tool_results".into(),
                blocks,
                stop_reason: None,
                metrics: None,
                error: None,
            });
        } else if let Some(error) = exchange.get("error") {
            turns.push(Turn {
                turn,
                kind: "error".into(),
                blocks: Vec::new(),
                stop_reason: None,
                metrics: None,
                error: Some(
                    error["message"]
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_string),
                ),
            });
        }
    }
    Conversation {
        system: conv["system"].as_str().map(str::to_string),
        tools: conv["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect(),
        prompt: conv["prompt"].as_str().map(str::to_string),
        turns,
        final_text: text_of(&transcript["final_text"]),
    }
}

/// What a check found, in words: the word count against the limit, the
/// missing facts, the tool-call differences.
pub fn check_note(kind: &str, detail: &Value) -> String {
    let list = |v: &Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                Value::Array(group) => group
                    .iter()
                    .map(|g| g.as_str().map_or_else(|| g.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" | "),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match kind {
        "max_words" | "min_words" => {
            let (count, limit) = (&detail["count"], &detail["limit"]);
            let distance = detail["distance"].as_i64().unwrap_or(0);
            let bound = if kind == "max_words" {
                "at most"
            } else {
                "at least"
            };
            format!("{count} words, {bound} {limit} allowed ({distance:+})")
        }
        "sentences" | "bullets" => {
            let mut bounds = Vec::new();
            for key in ["exactly", "at_least", "at_most"] {
                if !detail[key].is_null() {
                    bounds.push(format!("{} {}", key.replace('_', " "), detail[key]));
                }
            }
            format!(
                "{} {kind}, wanted {} (off by {})",
                detail["count"],
                bounds.join(", "),
                detail["distance"]
            )
        }
        "facts" | "answer_contains" => {
            let missing = list(&detail["missing"]);
            if missing.is_empty() {
                format!("all found: {}", list(&detail["found"]))
            } else {
                format!("missing: {missing}")
            }
        }
        "forbidden" => {
            let found = list(&detail["found"]);
            if found.is_empty() {
                "no forbidden claim".into()
            } else {
                format!("forbidden claims made: {found}")
            }
        }
        "used_tool" => format!(
            "{} calls of {} (at least {} wanted)",
            detail["count"],
            list(&detail["names"]),
            detail["min"]
        ),
        "tool_calls" => {
            let mut parts = vec![format!(
                "{} of {} expected calls matched, {} made",
                detail["matched"], detail["expected"], detail["made"]
            )];
            for u in detail["unmatched_expected"]
                .as_array()
                .into_iter()
                .flatten()
            {
                parts.push(format!(
                    "{}: {}",
                    u["name"].as_str().unwrap_or("?"),
                    list(&u["differences"])
                ));
            }
            for u in detail["unexpected_calls"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "unexpected call {}({})",
                    u["name"].as_str().unwrap_or("?"),
                    u["input"]
                ));
            }
            for i in detail["invalid_calls"].as_array().into_iter().flatten() {
                parts.push(format!(
                    "invalid call {}: {}",
                    i["name"].as_str().unwrap_or("?"),
                    list(&i["errors"])
                ));
            }
            parts.join("; ")
        }
        "no_tool_calls" => {
            let calls = list(&detail["calls"]);
            if calls.is_empty() {
                "no calls made".into()
            } else {
                format!("calls made: {calls}")
            }
        }
        "valid_tool_calls" => {
            let invalid = detail["invalid"].as_array().map_or(0, Vec::len);
            format!("{} calls, {invalid} invalid", detail["calls"])
        }
        _ => detail.to_string(),
    }
}

async fn run_page(state: &DashboardState, selector: &str) -> Result<RunPage, Failure> {
    let store = state.store();
    let id = resolve_run(store, selector).await?;
    let run = store
        .run(id)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no run {id} in this database")))?;
    let stored = store.cases(id).await?;
    let summaries = summarize(&stored);
    let previous_comparable = store
        .list_runs(HISTORY_LIMIT)
        .await?
        .into_iter()
        .find(|r| {
            r.id < run.id
                && r.status == "complete"
                && r.model == run.model
                && r.label == run.label
                && comparability(r, &run).is_empty()
        })
        .map(|r| r.id);
    let cases = stored
        .into_iter()
        .map(|case| CaseView {
            check_notes: case
                .record
                .checks
                .iter()
                .map(|c| check_note(&c.kind, &c.detail))
                .collect(),
            conversation: conversation(&case.record.transcript),
            case,
        })
        .collect();
    let trends = run
        .suites
        .iter()
        .map(|s| SuiteLink {
            suite: s.suite.clone(),
            href: links::trends(&run.model, &s.suite, None, None),
        })
        .collect();
    Ok(RunPage {
        qualifications: run_qualifications(store, id).await?,
        compare_href: previous_comparable.map(|base| links::compare(base, id)),
        previous_comparable,
        summaries,
        cases,
        trends,
        run,
    })
}

async fn page(
    State(state): State<DashboardState>,
    Path(run): Path<String>,
) -> Result<Html<String>, PageFailure> {
    let view = run_page(&state, &run).await?;
    Ok(state.render("run.html.j2", &view)?)
}

async fn api(
    State(state): State<DashboardState>,
    Path(run): Path<String>,
) -> Result<Json<RunPage>, JsonFailure> {
    Ok(Json(run_page(&state, &run).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn check_notes_say_what_was_found() {
        assert_eq!(
            check_note(
                "max_words",
                &json!({"count": 12, "limit": 9, "distance": 3})
            ),
            "12 words, at most 9 allowed (+3)"
        );
        assert_eq!(
            check_note(
                "facts",
                &json!({"found": ["csv"], "missing": [["rust", "cargo"]]})
            ),
            "missing: rust | cargo"
        );
        let note = check_note(
            "tool_calls",
            &json!({"expected": 1, "made": 1, "matched": 0,
                    "unmatched_expected": [{"name": "get_weather", "differences": ["city: expected Paris, got Rome"]}],
                    "unexpected_calls": [], "invalid_calls": []}),
        );
        assert_eq!(
            note,
            "0 of 1 expected calls matched, 1 made; get_weather: city: expected Paris, got Rome"
        );
    }

    #[test]
    fn transcripts_become_turns_with_tool_calls_and_results() {
        let transcript = json!({
            "final_text": "It is sunny.",
            "conversation": {
                "system": "sys", "prompt": "Weather?",
                "tools": [{"name": "get_weather"}],
                "exchanges": [
                    {"turn": 1, "response": {"content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
                    ], "stop_reason": "tool_use"}},
                    {"turn": 1, "tool_results": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny", "is_error": false}]},
                    {"turn": 2, "error": {"message": "overloaded"}}
                ]
            }
        });
        let c = conversation(&transcript);
        assert_eq!(c.tools, ["get_weather"]);
        assert_eq!(c.turns.len(), 3);
        assert_eq!(c.turns[0].blocks[1].kind, "tool_use");
        assert_eq!(c.turns[0].blocks[1].name.as_deref(), Some("get_weather"));
        assert!(c.turns[0].blocks[1].text.contains("\"city\": \"Paris\""));
        assert_eq!(c.turns[1].kind, "tool_results");
        assert_eq!(c.turns[1].blocks[0].name.as_deref(), Some("get_weather"));
        assert_eq!(c.turns[1].blocks[0].text, "sunny");
        assert_eq!(c.turns[2].error.as_deref(), Some("overloaded"));
    }
}
