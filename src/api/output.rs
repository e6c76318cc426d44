//! From generated text to Messages content blocks: a parser splits the text
//! into plain text and tool calls, and [`BlockAssembler`] numbers the blocks
//! (contiguous from 0, one open at a time) and gives calls `toolu_` ids. The
//! same events build a streamed response and a complete one.

use serde_json::Value;

use super::wire::ContentBlock;

/// What a parser finds in the model's output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Plain text.
    Text(String),
    /// A tool call begins.
    ToolCallStart {
        /// Tool name.
        name: String,
    },
    /// A fragment of the call's JSON input.
    ToolCallInput(String),
    /// The call is complete.
    ToolCallEnd {
        /// Tool name.
        name: String,
        /// The parsed input.
        input: Value,
    },
}

/// Splits streamed output into [`OutputEvent`]s.
pub trait OutputParser: Send {
    /// Reads the next piece of text.
    fn push(&mut self, text: &str) -> Vec<OutputEvent>;
    /// Flushes what is held back at the end of generation.
    fn finish(&mut self) -> Vec<OutputEvent>;
}

/// Output without tools: all text.
pub struct PlainText;

impl OutputParser for PlainText {
    fn push(&mut self, text: &str) -> Vec<OutputEvent> {
        vec![OutputEvent::Text(text.to_string())]
    }
    fn finish(&mut self) -> Vec<OutputEvent> {
        Vec::new()
    }
}

/// A block-level event, as the SSE stream sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockEvent {
    /// `content_block_start`.
    Start {
        /// Block index.
        index: usize,
        /// The block with empty contents.
        block: ContentBlock,
    },
    /// `content_block_delta` with a `text_delta`.
    TextDelta {
        /// Block index.
        index: usize,
        /// Text.
        text: String,
    },
    /// `content_block_delta` with an `input_json_delta`.
    InputJsonDelta {
        /// Block index.
        index: usize,
        /// JSON fragment.
        partial_json: String,
    },
    /// `content_block_stop`.
    Stop {
        /// Block index.
        index: usize,
    },
}

enum Open {
    None,
    Text,
    ToolUse { streamed_input: bool },
}

/// Numbers blocks and collects the complete content.
pub struct BlockAssembler {
    parser: Box<dyn OutputParser>,
    open: Open,
    next_index: usize,
    content: Vec<ContentBlock>,
}

impl BlockAssembler {
    /// An assembler reading output through `parser`.
    pub fn new(parser: Box<dyn OutputParser>) -> Self {
        Self {
            parser,
            open: Open::None,
            next_index: 0,
            content: Vec::new(),
        }
    }

    /// Reads generated text; returns the block events it completes.
    pub fn push(&mut self, text: &str) -> Vec<BlockEvent> {
        let parsed = self.parser.push(text);
        self.apply(parsed)
    }

    /// Flushes the parser and closes the open block.
    pub fn finish(&mut self) -> Vec<BlockEvent> {
        let parsed = self.parser.finish();
        let mut events = self.apply(parsed);
        events.extend(self.close());
        events
    }

    /// Whether any tool call was made.
    pub fn has_tool_use(&self) -> bool {
        self.content
            .iter()
            .any(|b| matches!(b, ContentBlock::ToolUse { .. }))
    }

    /// The complete content blocks.
    pub fn content(&self) -> &[ContentBlock] {
        &self.content
    }

    fn apply(&mut self, parsed: Vec<OutputEvent>) -> Vec<BlockEvent> {
        let mut events = Vec::new();
        for event in parsed {
            match event {
                OutputEvent::Text(text) => {
                    if text.is_empty() {
                        continue;
                    }
                    if !matches!(self.open, Open::Text) {
                        events.extend(self.close());
                        let index = self.start(ContentBlock::Text {
                            text: String::new(),
                        });
                        events.push(BlockEvent::Start {
                            index,
                            block: ContentBlock::Text {
                                text: String::new(),
                            },
                        });
                        self.open = Open::Text;
                    }
                    if let Some(ContentBlock::Text { text: all }) = self.content.last_mut() {
                        all.push_str(&text);
                    }
                    events.push(BlockEvent::TextDelta {
                        index: self.next_index - 1,
                        text,
                    });
                }
                OutputEvent::ToolCallStart { name } => {
                    events.extend(self.start_tool_use(name));
                }
                OutputEvent::ToolCallInput(fragment) => {
                    if let Open::ToolUse { streamed_input } = &mut self.open {
                        *streamed_input = true;
                        events.push(BlockEvent::InputJsonDelta {
                            index: self.next_index - 1,
                            partial_json: fragment,
                        });
                    }
                }
                OutputEvent::ToolCallEnd { name, input } => {
                    let started = matches!(self.open, Open::ToolUse { .. });
                    if !started {
                        events.extend(self.start_tool_use(name));
                    }
                    if let Open::ToolUse {
                        streamed_input: false,
                    } = self.open
                    {
                        events.push(BlockEvent::InputJsonDelta {
                            index: self.next_index - 1,
                            partial_json: input.to_string(),
                        });
                    }
                    if let Some(ContentBlock::ToolUse { input: slot, .. }) = self.content.last_mut()
                    {
                        *slot = input;
                    }
                    events.extend(self.close());
                }
            }
        }
        events
    }

    /// Closes the open block and opens a `tool_use` block with a fresh id.
    fn start_tool_use(&mut self, name: String) -> Vec<BlockEvent> {
        let mut events = self.close();
        let block = ContentBlock::ToolUse {
            id: super::ids::tool_use_id(),
            name,
            input: Value::Object(Default::default()),
        };
        let index = self.start(block.clone());
        events.push(BlockEvent::Start { index, block });
        self.open = Open::ToolUse {
            streamed_input: false,
        };
        events
    }

    fn start(&mut self, block: ContentBlock) -> usize {
        self.content.push(block);
        self.next_index += 1;
        self.next_index - 1
    }

    fn close(&mut self) -> Vec<BlockEvent> {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => Vec::new(),
            _ => vec![BlockEvent::Stop {
                index: self.next_index - 1,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Vec<Vec<OutputEvent>>);
    impl OutputParser for Scripted {
        fn push(&mut self, _: &str) -> Vec<OutputEvent> {
            if self.0.is_empty() {
                Vec::new()
            } else {
                self.0.remove(0)
            }
        }
        fn finish(&mut self) -> Vec<OutputEvent> {
            Vec::new()
        }
    }

    #[test]
    fn blocks_are_contiguous_and_one_open_at_a_time() {
        let script = vec![
            vec![OutputEvent::Text("Let me look.".into())],
            vec![
                OutputEvent::ToolCallStart {
                    name: "Read".into(),
                },
                OutputEvent::ToolCallInput("{\"file_path\":".into()),
            ],
            vec![
                OutputEvent::ToolCallInput("\"a\"}".into()),
                OutputEvent::ToolCallEnd {
                    name: "Read".into(),
                    input: serde_json::json!({"file_path": "a"}),
                },
                OutputEvent::ToolCallEnd {
                    name: "LS".into(),
                    input: serde_json::json!({"path": "."}),
                },
            ],
        ];
        let mut assembler = BlockAssembler::new(Box::new(Scripted(script)));
        let mut events = Vec::new();
        for _ in 0..3 {
            events.extend(assembler.push("x"));
        }
        events.extend(assembler.finish());
        let mut open: Option<usize> = None;
        let mut next = 0;
        for event in &events {
            match event {
                BlockEvent::Start { index, .. } => {
                    assert!(open.is_none(), "a block started while another was open");
                    assert_eq!(*index, next);
                    open = Some(*index);
                    next += 1;
                }
                BlockEvent::Stop { index } => {
                    assert_eq!(open.take(), Some(*index));
                }
                BlockEvent::TextDelta { index, .. } | BlockEvent::InputJsonDelta { index, .. } => {
                    assert_eq!(open, Some(*index));
                }
            }
        }
        assert!(open.is_none());
        assert_eq!(next, 3);
        assert!(assembler.has_tool_use());
        assert_eq!(
            assembler.content()[2],
            ContentBlock::ToolUse {
                id: match &assembler.content()[2] {
                    ContentBlock::ToolUse { id, .. } => id.clone(),
                    _ => unreachable!(),
                },
                name: "LS".into(),
                input: serde_json::json!({"path": "."}),
            }
        );
    }
}
