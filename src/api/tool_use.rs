//! Tool use on the API: the model's tool-call format (`crate::tools`) behind
//! the prompt builder's [`ToolPromptFormat`], its streaming parser behind
//! [`OutputParser`], and `tool_choice` enforced by a grammar constraint.

use serde_json::Value;
use showdown_engine::{Engine, TokenConstraint};

use super::error::ApiError;
use super::output::{OutputEvent, OutputParser};
use super::prompt::ToolPromptFormat;
use super::wire::{MessagesRequest, ToolChoiceParam};
use crate::tools::{
    ParsedEvent, ToolCall, ToolCallConstraint, ToolCallFormat, ToolCallParser, ToolChoice,
    ToolDefinition, ToolGrammarEnv,
};

/// A model's tool-call format, as the prompt builder uses it.
pub struct FormatAdapter(pub ToolCallFormat);

impl ToolPromptFormat for FormatAdapter {
    fn tools_section(&self, tools: &[(String, Option<String>, Value)]) -> String {
        let definitions: Vec<ToolDefinition> = tools
            .iter()
            .map(|(name, description, schema)| ToolDefinition {
                name: name.clone(),
                description: description.clone(),
                input_schema: schema.clone(),
            })
            .collect();
        self.0.tools_system_prompt(&definitions)
    }

    fn tool_calls(&self, calls: &[(String, Value)]) -> String {
        let calls: Vec<ToolCall> = calls
            .iter()
            .map(|(name, input)| ToolCall {
                name: name.clone(),
                input: input.clone(),
            })
            .collect();
        self.0.render_tool_calls(&calls)
    }

    fn tool_result(&self, name: Option<&str>, content: &str, is_error: bool) -> String {
        self.0.render_tool_result(name, content, is_error)
    }

    fn results_turn(&self) -> Option<&'static str> {
        self.0.results_turn()
    }

    fn results_in_model_turn(&self) -> bool {
        self.0.results_in_model_turn()
    }
}

/// The format's streaming parser, as the block assembler reads it.
pub struct ParserAdapter(pub Option<ToolCallParser>);

fn convert(events: Vec<ParsedEvent>) -> Vec<OutputEvent> {
    events
        .into_iter()
        .map(|event| match event {
            ParsedEvent::Text(text) => OutputEvent::Text(text),
            ParsedEvent::ToolCallStart { name } => OutputEvent::ToolCallStart { name },
            ParsedEvent::ToolCallInput(fragment) => OutputEvent::ToolCallInput(fragment),
            ParsedEvent::ToolCallEnd(call) => OutputEvent::ToolCallEnd {
                name: call.name,
                input: call.input,
            },
        })
        .collect()
}

impl OutputParser for ParserAdapter {
    fn push(&mut self, text: &str) -> Vec<OutputEvent> {
        match &mut self.0 {
            Some(parser) => convert(parser.push(text)),
            None => Vec::new(),
        }
    }
    fn finish(&mut self) -> Vec<OutputEvent> {
        self.0
            .take()
            .map(|p| convert(p.finish()))
            .unwrap_or_default()
    }
}

/// The tools a request offers.
pub fn definitions(request: &MessagesRequest) -> Vec<ToolDefinition> {
    request
        .tools
        .iter()
        .map(|t| ToolDefinition {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t
                .input_schema
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
        .collect()
}

/// The parser of `format` for a request's output (it types `qwen35`
/// parameters by the request's tools' schemas).
pub fn parser_for(format: ToolCallFormat, request: &MessagesRequest) -> ParserAdapter {
    ParserAdapter(Some(format.parser_for(&definitions(request))))
}

/// The choice a request makes, and whether parallel calls are off.
pub fn choice_of(request: &MessagesRequest) -> (ToolChoice, bool) {
    match &request.tool_choice {
        None => (ToolChoice::Auto, false),
        Some(ToolChoiceParam::Auto {
            disable_parallel_tool_use,
        }) => (ToolChoice::Auto, *disable_parallel_tool_use),
        Some(ToolChoiceParam::Any {
            disable_parallel_tool_use,
        }) => (ToolChoice::Any, *disable_parallel_tool_use),
        Some(ToolChoiceParam::Tool {
            name,
            disable_parallel_tool_use,
        }) => (ToolChoice::Tool(name.clone()), *disable_parallel_tool_use),
        Some(ToolChoiceParam::None {}) => (ToolChoice::None, false),
    }
}

/// The grammar that enforces `tool_choice` and the tools' input schemas.
pub fn constraint_for(
    engine: &Engine,
    env: &ToolGrammarEnv,
    format: ToolCallFormat,
    request: &MessagesRequest,
) -> Result<Option<Box<dyn TokenConstraint + Send>>, ApiError> {
    if request.tools.is_empty() {
        return Ok(None);
    }
    let definitions = definitions(request);
    let (choice, disable_parallel) = choice_of(request);
    let constraint = ToolCallConstraint::with_env(
        env,
        format,
        &definitions,
        &choice,
        disable_parallel,
        engine.tokenizer(),
    )
    .map_err(|e| ApiError::invalid(format!("tools: {e}")))?;
    Ok(Some(Box::new(constraint)))
}
