//! `POST /v1/messages` (streamed and not) and `POST /v1/messages/count_tokens`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use showdown_engine::{CancelToken, GenerateParams, Generation, SamplingParams, StopReason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::extract::ApiJson;
use super::output::{BlockAssembler, BlockEvent, OutputParser, PlainText};
use super::prompt::{build_prompt, Breakpoint, Prompt};
use super::tool_use::{constraint_for, parser_for, FormatAdapter};
use super::wire::{
    ContentBlock, ContentBlockParam, MessageContent, MessageResponse, MessagesRequest, Role,
    ToolChoiceParam, ToolResultBlock, ToolResultContent, Usage,
};
use super::worker::{Job, WorkerEvent};
use super::{ids, AppState, ServedModel};

/// The messages routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/messages", post(create_message))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

/// How often an idle stream sends `ping`.
const PING_INTERVAL: Duration = Duration::from_secs(5);

async fn count_tokens(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<MessagesRequest>,
) -> Result<Json<Value>, ApiError> {
    validate(&request)?;
    let model = state.resolve(&request.model)?;
    refuse_images(&request, &model.name)?;
    let prompt = render(&model, request, state.config.log_prompts).await?;
    Ok(Json(json!({"input_tokens": prompt.tokens.len()})))
}

async fn create_message(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let max_tokens = match request.max_tokens {
        None => return Err(ApiError::invalid("max_tokens: Field required")),
        Some(0) => return Err(ApiError::invalid("max_tokens: must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let sampling = sampling(&request)?;
    validate(&request)?;
    let model = state.resolve(&request.model)?;
    refuse_images(&request, &model.name)?;
    let requested_model = request.model.clone();
    let stream = request.stream;
    let stop_sequences = request.stop_sequences.clone();
    let (constraint, parser): (_, Box<dyn OutputParser>) = match model.tool_format {
        Some(format) if !request.tools.is_empty() => {
            let env = model.grammar_env()?;
            let parser = parser_for(format, &request);
            let model = model.clone();
            let request = request.clone();
            let constraint = tokio::task::spawn_blocking(move || {
                constraint_for(&model.engine, &env, format, &request)
            })
            .await
            .map_err(|e| ApiError::internal(format!("building the tool grammar: {e}")))??;
            (constraint, Box::new(parser))
        }
        _ => (None, Box::new(PlainText)),
    };
    let prompt = render(&model, request, state.config.log_prompts).await?;

    let context = model.engine.context_length();
    if prompt.tokens.len() >= context {
        return Err(ApiError::invalid(format!(
            "prompt is too long: {} tokens > {} maximum",
            prompt.tokens.len(),
            context - 1
        )));
    }
    // Clamped, not refused: clients ask for more than a small context holds.
    let max_tokens = max_tokens.min(context - prompt.tokens.len());

    let cancel = CancelToken::new();
    let (events, mut receiver) = mpsc::unbounded_channel();
    model.worker.submit(Job {
        prompt: prompt.tokens.clone(),
        params: GenerateParams {
            max_tokens,
            sampling,
            stop_sequences,
            snapshot_at: prompt.breakpoints.iter().map(|b| b.tokens).collect(),
        },
        constraint,
        cancel: cancel.clone(),
        events,
    })?;
    let guard = CancelOnDrop(cancel);

    // Wait for the queue before answering, so a failure is a proper status.
    let cached_tokens = match receiver.recv().await {
        Some(WorkerEvent::Started { cached_tokens }) => cached_tokens,
        Some(WorkerEvent::Failed(err)) => return Err(err),
        Some(_) | None => return Err(ApiError::internal("the engine stopped unexpectedly")),
    };
    let mut exchange = Exchange {
        id: ids::message_id(),
        model: requested_model,
        served: model.clone(),
        usage: usage(&prompt, cached_tokens, 0),
        cached_tokens,
        assembler: BlockAssembler::new(parser),
        started,
    };
    if stream {
        let (sse, body) = mpsc::channel::<Result<Event, Infallible>>(64);
        tokio::spawn(async move {
            let _guard = guard;
            exchange.stream(receiver, sse).await;
        });
        let sse = Sse::new(ReceiverStream::new(body)).keep_alive(
            KeepAlive::new()
                .interval(PING_INTERVAL)
                .event(Event::default().event("ping").data(r#"{"type": "ping"}"#)),
        );
        return Ok(sse.into_response());
    }
    let _guard = guard;
    let mut finished = None;
    while let Some(event) = receiver.recv().await {
        match event {
            WorkerEvent::Text(text) => {
                exchange.assembler.push(&text);
            }
            WorkerEvent::Finished(generation) => {
                finished = Some(generation);
                break;
            }
            WorkerEvent::Failed(err) => return Err(err),
            WorkerEvent::Started { .. } => {}
        }
    }
    let generation =
        finished.ok_or_else(|| ApiError::internal("the engine stopped unexpectedly"))?;
    exchange.assembler.finish();
    let (stop_reason, stop_sequence) = exchange.stop_reason(&generation);
    exchange.usage.output_tokens = generation.tokens.len();
    exchange.log(&generation, stop_reason);
    let response = MessageResponse {
        id: exchange.id.clone(),
        kind: "message",
        role: Role::Assistant,
        model: exchange.model.clone(),
        content: exchange.assembler.content().to_vec(),
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: exchange.usage,
    };
    Ok(Json(response).into_response())
}

/// Cancels the generation when the request goes away (client disconnect).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// One request/response in flight.
struct Exchange {
    id: String,
    model: String,
    served: Arc<ServedModel>,
    cached_tokens: usize,
    usage: Usage,
    assembler: BlockAssembler,
    started: Instant,
}

impl Exchange {
    async fn stream(
        &mut self,
        mut receiver: mpsc::UnboundedReceiver<WorkerEvent>,
        sse: mpsc::Sender<Result<Event, Infallible>>,
    ) {
        let send = |event: Event| {
            let sse = sse.clone();
            async move { sse.send(Ok(event)).await.is_ok() }
        };
        let start = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": self.usage,
            }
        });
        if !send(sse_event("message_start", &start)).await {
            return;
        }
        if !send(sse_event("ping", &json!({"type": "ping"}))).await {
            return;
        }
        loop {
            // A client gone during a long prefill is noticed now, not at the
            // first token: leaving cancels the generation (the caller's guard).
            let event = tokio::select! {
                event = receiver.recv() => event,
                () = sse.closed() => return,
            };
            let Some(event) = event else { break };
            let blocks = match event {
                WorkerEvent::Text(text) => self.assembler.push(&text),
                WorkerEvent::Finished(generation) => {
                    let mut events: Vec<Event> = self
                        .assembler
                        .finish()
                        .into_iter()
                        .map(block_event)
                        .collect();
                    let (stop_reason, stop_sequence) = self.stop_reason(&generation);
                    self.usage.output_tokens = generation.tokens.len();
                    self.log(&generation, stop_reason);
                    events.push(sse_event(
                        "message_delta",
                        &json!({
                            "type": "message_delta",
                            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                            "usage": self.usage,
                        }),
                    ));
                    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
                    for event in events {
                        if !send(event).await {
                            return;
                        }
                    }
                    return;
                }
                WorkerEvent::Failed(err) => {
                    tracing::warn!(error = %err, "generation failed after the stream started");
                    let _ = send(sse_event("error", &err.body(None))).await;
                    return;
                }
                WorkerEvent::Started { .. } => Vec::new(),
            };
            for block in blocks {
                if !send(block_event(block)).await {
                    return;
                }
            }
        }
        let err = ApiError::internal("the engine stopped unexpectedly");
        let _ = send(sse_event("error", &err.body(None))).await;
    }

    fn stop_reason(&self, generation: &Generation) -> (&'static str, Option<String>) {
        match &generation.stop_reason {
            StopReason::StopSequence(s) => ("stop_sequence", Some(s.clone())),
            StopReason::MaxTokens | StopReason::ContextFull => ("max_tokens", None),
            StopReason::EndOfTurn | StopReason::Cancelled => {
                if self.assembler.has_tool_use() {
                    ("tool_use", None)
                } else {
                    ("end_turn", None)
                }
            }
        }
    }

    fn log(&self, generation: &Generation, stop_reason: &str) {
        let t = &generation.timings;
        tracing::info!(
            model = %self.served.name,
            input_tokens = self.usage.input_tokens,
            cache_read_input_tokens = self.cached_tokens,
            cache_creation_input_tokens = self.usage.cache_creation_input_tokens,
            output_tokens = generation.tokens.len(),
            prompt_tokens = self.usage.prompt_tokens(),
            ttft_ms = format!("{:.0}", t.ttft_ms),
            duration_ms = format!("{:.0}", self.started.elapsed().as_secs_f64() * 1000.0),
            stop_reason,
            "message"
        );
    }
}

fn sse_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn block_event(event: BlockEvent) -> Event {
    match event {
        BlockEvent::Start { index, block } => sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block_json(&block)}),
        ),
        BlockEvent::TextDelta { index, text } => sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        ),
        BlockEvent::InputJsonDelta {
            index,
            partial_json,
        } => sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": partial_json}}),
        ),
        BlockEvent::Stop { index } => sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ),
    }
}

fn block_json(block: &ContentBlock) -> Value {
    serde_json::to_value(block).unwrap_or(Value::Null)
}

/// Splits the prompt's tokens into Anthropic's three counters: read from the
/// cache, written at a breakpoint, and neither. They add up to the prompt.
fn usage(prompt: &Prompt, cached_tokens: usize, output_tokens: usize) -> Usage {
    let total = prompt.tokens.len();
    let read = cached_tokens.min(total);
    let last_breakpoint = prompt
        .breakpoints
        .iter()
        .map(|b: &Breakpoint| b.tokens)
        .max()
        .unwrap_or(0)
        .min(total);
    let creation = last_breakpoint.saturating_sub(read);
    Usage {
        input_tokens: total - read - creation,
        cache_creation_input_tokens: creation,
        cache_read_input_tokens: read,
        output_tokens,
    }
}

fn sampling(request: &MessagesRequest) -> Result<SamplingParams, ApiError> {
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature: must be between 0 and 1"));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p: must be greater than 0 and at most 1",
        ));
    }
    Ok(SamplingParams {
        temperature,
        top_k: request.top_k.unwrap_or(0) as usize,
        top_p,
        seed: rand::random(),
    })
}

/// Checks what the schema cannot say, before any model is looked up.
fn validate(request: &MessagesRequest) -> Result<(), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    if let Some(i) = request.stop_sequences.iter().position(String::is_empty) {
        return Err(ApiError::invalid(format!(
            "stop_sequences[{i}]: must not be empty"
        )));
    }
    validate_tools(request)
}

/// Anthropic's rule for client tool names.
fn is_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A versioned server tool (`web_search_20250305`, `bash_20250124`, ...) or
/// an MCP toolset.
fn is_server_tool_type(kind: &str) -> bool {
    if kind == "mcp_toolset" {
        return true;
    }
    kind.rsplit_once('_').is_some_and(|(name, date)| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && date.len() == 8
            && date.bytes().all(|b| b.is_ascii_digit())
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate_tools(request: &MessagesRequest) -> Result<(), ApiError> {
    for (i, tool) in request.tools.iter().enumerate() {
        if tool.is_custom() {
            if !is_tool_name(&tool.name) {
                return Err(ApiError::invalid(format!(
                    "tools[{i}].name: must be 1 to 128 letters, digits, `_` or `-`, got `{}`",
                    tool.name
                )));
            }
            match &tool.input_schema {
                None => {
                    return Err(ApiError::invalid(format!(
                        "tools[{i}].input_schema: Field required"
                    )))
                }
                Some(Value::Object(schema)) => {
                    if schema.get("type").and_then(Value::as_str) != Some("object") {
                        return Err(ApiError::invalid(format!(
                            "tools[{i}].input_schema.type: must be \"object\""
                        )));
                    }
                }
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "tools[{i}].input_schema: must be a JSON Schema object, got {}",
                        json_kind(other)
                    )))
                }
            }
        } else {
            let kind = tool.kind.as_deref().unwrap_or_default();
            if !is_server_tool_type(kind) {
                return Err(ApiError::invalid(format!(
                    "tools[{i}].type: unknown tool type `{kind}`"
                )));
            }
            if tool.name.is_empty() {
                return Err(ApiError::invalid(format!(
                    "tools[{i}].name: must not be empty"
                )));
            }
        }
        if request.tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(ApiError::invalid(format!(
                "tools: tool names must be unique (`{}` repeats)",
                tool.name
            )));
        }
    }
    match &request.tool_choice {
        Some(ToolChoiceParam::Tool { name, .. })
            if !request.tools.iter().any(|t| &t.name == name) =>
        {
            return Err(ApiError::invalid(format!(
                "tool_choice: tool `{name}` is not among the tools"
            )));
        }
        Some(ToolChoiceParam::Any { .. }) if request.tools.is_empty() => {
            return Err(ApiError::invalid(
                "tool_choice: `any` requires at least one tool",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Images are refused rather than dropped: a model that never saw the
/// picture would answer as if it had.
fn refuse_images(request: &MessagesRequest, model: &str) -> Result<(), ApiError> {
    for (i, message) in request.messages.iter().enumerate() {
        let MessageContent::Blocks(blocks) = &message.content else {
            continue;
        };
        for (j, block) in blocks.iter().enumerate() {
            let image_at = match block {
                ContentBlockParam::Image {} => Some(format!("messages[{i}].content[{j}]")),
                ContentBlockParam::ToolResult {
                    content: Some(ToolResultContent::Blocks(inner)),
                    ..
                } => inner
                    .iter()
                    .position(|b| matches!(b, ToolResultBlock::Image {}))
                    .map(|k| format!("messages[{i}].content[{j}].content[{k}]")),
                _ => None,
            };
            if let Some(at) = image_at {
                return Err(ApiError::invalid(format!(
                    "{at}: model `{model}` reads text only; image blocks are not supported"
                )));
            }
        }
    }
    Ok(())
}

/// Renders and tokenizes off the async runtime; with `--log-prompts`, logs
/// the rendered prompt (never logged otherwise).
async fn render(
    model: &Arc<ServedModel>,
    request: MessagesRequest,
    log_prompts: bool,
) -> Result<Prompt, ApiError> {
    let model = model.clone();
    let prompt = tokio::task::spawn_blocking(move || {
        let format = model.tool_format.map(FormatAdapter);
        let prompt = build_prompt(
            &model.engine,
            &request,
            format
                .as_ref()
                .map(|f| f as &dyn super::prompt::ToolPromptFormat),
        );
        if let (true, Ok(prompt)) = (log_prompts, &prompt) {
            tracing::info!(
                model = %model.name,
                tokens = prompt.tokens.len(),
                // Quoted: one log line per prompt, however many lines it has.
                prompt = ?prompt.text,
                "prompt"
            );
        }
        prompt
    })
    .await
    .map_err(|e| ApiError::internal(format!("rendering the prompt: {e}")))?;
    prompt
}
