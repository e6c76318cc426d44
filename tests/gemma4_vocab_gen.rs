//! A deterministic generator of a small Gemma 4-style vocabulary
//! (`tokenizer.ggml.model = "gemma4"`), written as a tokenizer-only GGUF the
//! way llama.cpp ships its vocabulary test files (`models/ggml-vocab-*.gguf`:
//! the model's metadata, no tensors). llama.cpp's `llama-tokenize` on this
//! file is the oracle for the engine's `gemma4` tokenizer
//! (`fixtures/tokenizer/make_reference.sh gemma4-generated`); the real
//! 262,144-token vocabulary is not installable here.
//!
//! The layout follows the real vocabulary (read off llama.cpp b11434's
//! `models/ggml-vocab-gemma-4.gguf`):
//! - control tokens at the real ids (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>`
//!   3, `<mask>` 4, `<|tool>`/`<tool|>`, `<|think|>`, `<|turn>`/`<turn|>`) and
//!   the user-defined ones (`<|tool_call>`, `<|tool_response>`, `<|"|>`,
//!   `<|channel>`…), with normal `<unusedN>` tokens between them;
//! - runs of 1–31 newlines, tabs and `▁` as tokens, with every merge of two
//!   shorter runs, ordered as the real file orders them (left part longest
//!   first, then right part longest first, newline/`▁`/tab interleaved) and
//!   ranked before every other merge;
//! - the 256 `<0xXX>` byte tokens, so characters outside the vocabulary
//!   (accents, emoji, most scripts) fall back to bytes;
//! - single characters of printable ASCII and of a fixed corpus, then merges
//!   learnt from that corpus by plain BPE (spaces already `▁`, one word per
//!   line, as Gemma 4 pre-tokenizes), so merges cross word boundaries as the
//!   real ones do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::gemma4_gen::{hparams_metadata, Gemma4Spec};
use crate::moe_gen::{u32v, write_gguf};

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Learnt merges after the run merges.
const LEARNT_MERGES: usize = 600;

/// Special tokens at their real ids; the gaps hold `<unusedN>` normal tokens.
const SPECIALS: &[(u32, &str, i32)] = &[
    (0, "<pad>", CONTROL),
    (1, "<eos>", CONTROL),
    (2, "<bos>", CONTROL),
    (3, "<unk>", CONTROL),
    (4, "<mask>", CONTROL),
    (5, "[multimodal]", NORMAL),
    (46, "<|tool>", CONTROL),
    (47, "<tool|>", CONTROL),
    (48, "<|tool_call>", USER_DEFINED),
    (49, "<tool_call|>", USER_DEFINED),
    (50, "<|tool_response>", USER_DEFINED),
    (51, "<tool_response|>", USER_DEFINED),
    (52, "<|\"|>", USER_DEFINED),
    (98, "<|think|>", CONTROL),
    (100, "<|channel>", USER_DEFINED),
    (101, "<channel|>", USER_DEFINED),
    (105, "<|turn>", CONTROL),
    (106, "<turn|>", CONTROL),
];

/// The longest newline, tab and `▁` run with a token of its own.
const LONGEST_RUN: usize = 31;

/// The text the merges are learnt from: prose, code, JSON, the tool-call
/// syntax Gemma 4's template teaches, and a little German, French and Chinese.
const CORPUS: &str = r#"The quick brown fox jumps over the lazy dog. The summary of the project is short.
Summarize the repository in at most one hundred words, then stop.
The engine reads the model file, builds the tokenizer and runs the prompt through every layer.
It was a bright cold day in April, and the clocks were striking thirteen.
A local model answers through an Anthropic-compatible server with prompt caching.
fn main() {
    let values = vec![1, 2, 3];
    for value in &values {
        println!("{value}");
    }
}
def summarize(path: str, limit: int = 100) -> str:
    """Return a summary of the file at path."""
    with open(path) as handle:
        return handle.read()[:limit]
{"name": "read_file", "arguments": {"path": "src/main.rs", "limit": 10}}
{"type": "tool_use", "id": "toolu_01", "name": "list_files", "input": {"dir": "."}}
<|tool_call>call:read_file{path:<|"|>src/lib.rs<|"|>,limit:20}<tool_call|>
<|tool_response>response:read_file{content:<|"|>pub mod engine;<|"|>}<tool_response|>
<|turn>user
What does this project do?<turn|>
<|turn>model
It evaluates local models on agent tasks.<turn|>
Die Straße ist lang, und der Hund läuft schnell über die Brücke.
Le garçon mange une pomme; la fenêtre est ouverte.
你好世界，今天天气很好。
if x == 0 && y != 1 || z >= 2 { return Err(error); } else { return Ok(()); }
items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000, 2024, 3.14, 0x1F]
"#;

fn run(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// `(tokens, types, merges)` of the generated vocabulary.
pub fn gemma4_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut unused = 0;
    for &(id, text, ty) in SPECIALS {
        while tokens.len() < id as usize {
            tokens.push(format!("<unused{unused}>"));
            types.push(NORMAL);
            unused += 1;
        }
        tokens.push(text.to_string());
        types.push(ty);
    }
    let push = |tokens: &mut Vec<String>, types: &mut Vec<i32>, text: String, ty| {
        if !tokens.contains(&text) {
            tokens.push(text);
            types.push(ty);
        }
    };
    let run_chars = ['\n', '▁', '\t'];
    for c in run_chars {
        for n in 1..=LONGEST_RUN {
            push(&mut tokens, &mut types, run(c, n), NORMAL);
        }
    }
    for byte in 0..=255u8 {
        push(&mut tokens, &mut types, format!("<0x{byte:02X}>"), BYTE);
    }
    let corpus = CORPUS.replace(' ', "▁");
    let alphabet: std::collections::BTreeSet<char> = ('!'..='~')
        .chain(corpus.chars().filter(|c| *c != '\n'))
        .collect();
    for c in alphabet {
        push(&mut tokens, &mut types, c.to_string(), NORMAL);
    }

    // Run merges first, in the real file's order.
    let mut merges = Vec::new();
    for left in (1..LONGEST_RUN).rev() {
        for right in (1..=LONGEST_RUN - left).rev() {
            for c in run_chars {
                merges.push(format!("{} {}", run(c, left), run(c, right)));
            }
        }
    }

    // Plain BPE on the corpus lines: merge the most frequent adjacent pair
    // (ties: the smallest pair), never a pair of whitespace runs.
    let mut words: Vec<Vec<String>> = corpus
        .split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| line.chars().map(String::from).collect())
        .collect();
    let is_run = |s: &str| s.chars().all(|c| run_chars.contains(&c));
    let mut learnt = HashSet::new();
    while learnt.len() < LEARNT_MERGES {
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for word in &words {
            for pair in word.windows(2) {
                if is_run(&pair[0]) && is_run(&pair[1]) {
                    continue;
                }
                *counts
                    .entry((pair[0].clone(), pair[1].clone()))
                    .or_default() += 1;
            }
        }
        let Some(best) = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(pair, _)| pair.clone())
        else {
            break;
        };
        let merged = format!("{}{}", best.0, best.1);
        for word in &mut words {
            let mut i = 0;
            while i + 1 < word.len() {
                if word[i] == best.0 && word[i + 1] == best.1 {
                    word[i] = merged.clone();
                    word.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{} {}", best.0, best.1));
        learnt.insert(best);
        push(&mut tokens, &mut types, merged, NORMAL);
    }
    (tokens, types, merges)
}

/// The vocabulary's `tokenizer.ggml.*` metadata, as the real file has it.
pub fn gemma4_tokenizer_metadata() -> (Vec<(String, Value)>, usize) {
    let (tokens, types, merges) = gemma4_vocab();
    let vocab = tokens.len();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let id = |name: &str| {
        let id = tokens.iter().position(|t| t == name).unwrap();
        u32v(id)
    };
    let metadata = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gemma4".into()),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(vec![Value::F32(0.0); vocab]),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), id("<bos>")),
        ("tokenizer.ggml.eos_token_id".to_string(), id("<eos>")),
        ("tokenizer.ggml.unknown_token_id".to_string(), id("<unk>")),
        ("tokenizer.ggml.padding_token_id".to_string(), id("<pad>")),
        ("tokenizer.ggml.mask_token_id".to_string(), id("<mask>")),
        (
            "tokenizer.ggml.add_space_prefix".to_string(),
            Value::Bool(false),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(true),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
        ("tokenizer.ggml.merges".to_string(), strings(merges)),
    ];
    (metadata, vocab)
}

/// Writes the vocabulary as a tokenizer-only GGUF with the MoE file's
/// hyper-parameters (llama.cpp reads them even when it loads only a vocabulary).
pub fn write_gemma4_vocab(path: &Path) {
    let (tokenizer, vocab) = gemma4_tokenizer_metadata();
    let mut metadata = hparams_metadata(&Gemma4Spec::moe());
    metadata.push(("gemma4.vocab_size".into(), u32v(vocab)));
    metadata.extend(tokenizer);
    write_gguf(path, &metadata, &[]);
}

#[test]
fn the_generated_vocabulary_is_well_formed() {
    let (tokens, types, merges) = gemma4_vocab();
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    assert_eq!(ids.len(), tokens.len(), "tokens are unique");
    for &(id, text, ty) in SPECIALS {
        assert_eq!(ids[text], id as usize);
        assert_eq!(types[id as usize], ty);
    }
    assert_eq!(types.iter().filter(|&&t| t == BYTE).count(), 256);
    assert_eq!(
        merges.len(),
        3 * LONGEST_RUN * (LONGEST_RUN - 1) / 2 + LEARNT_MERGES
    );
    for merge in &merges {
        let at = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .unwrap()
            .0;
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        let merged = format!("{left}{right}");
        for part in [left, right, merged.as_str()] {
            assert!(ids.contains_key(part), "{merge:?}: {part:?}");
        }
    }
}

/// Writes the vocabulary into `$SHOWDOWN_GEMMA4_VOCAB_OUT` for
/// `fixtures/tokenizer/make_reference.sh gemma4-generated`.
#[test]
#[ignore = "writes the generated gemma4 vocabulary for the fixture script"]
fn write_generated_gemma4_vocab() {
    let path = std::env::var("SHOWDOWN_GEMMA4_VOCAB_OUT").expect("SHOWDOWN_GEMMA4_VOCAB_OUT");
    write_gemma4_vocab(Path::new(&path));
}
