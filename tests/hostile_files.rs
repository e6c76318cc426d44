//! Hostile input, as property tests: mutated and truncated GGUF files into
//! the model loader (refused with a clear error, never a panic, never an
//! allocation sized by the file's word alone), and arbitrary paths and
//! numbers into the sandbox tools (an answer or an error for the model,
//! never a panic, never a byte from outside the fixture).
//!
//! Case counts are the CI defaults below; `PROPTEST_SCALE` multiplies them.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use proptest::prelude::*;
use serde_json::{json, Value};
use showdown::{Sandbox, OUTPUT_LIMIT_BYTES};
use showdown_engine::Gguf;

use crate::util::pinned_model_path;
use crate::util::proptest_cases as cases;

// ---- GGUF ------------------------------------------------------------------------

/// A header field of the generated file: where it is and how wide.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    width: usize,
}

/// A tiny valid GGUF v3 file written by hand, so every count, length, type
/// id, dimension and offset in it has a known place to mutate.
struct TinyGguf {
    bytes: Vec<u8>,
    fields: Vec<Field>,
    /// Where tensor data starts: everything before is header.
    data_start: usize,
}

impl TinyGguf {
    fn new() -> Self {
        let mut g = Self {
            bytes: Vec::new(),
            fields: Vec::new(),
            data_start: 0,
        };
        g.bytes.extend_from_slice(b"GGUF");
        g.u32(3);
        g.u64(2); // tensors
        g.u64(6); // metadata entries
        g.key("general.architecture", 8);
        g.string("llama");
        g.key("general.alignment", 4);
        g.u32(32);
        g.key("llama.block_count", 4);
        g.u32(1);
        g.key("tokenizer.ggml.tokens", 9);
        g.u32(8);
        g.u64(3);
        for token in ["a", "bb", "ccc"] {
            g.string(token);
        }
        g.key("tokenizer.ggml.scores", 9);
        g.u32(6);
        g.u64(3);
        for score in [0.0f32, -1.0, -2.0] {
            g.bytes.extend_from_slice(&score.to_le_bytes());
        }
        // An array of arrays of u8.
        g.key("test.nested", 9);
        g.u32(9);
        g.u64(2);
        for inner in [[1u8, 2], [3, 4]] {
            g.u32(0);
            g.u64(2);
            g.bytes.extend_from_slice(&inner);
        }
        // token_embd: F32 (32, 4) = 512 bytes at 0; a Q8_0 (32, 2) = 2
        // blocks of 34 bytes at 512.
        g.tensor("token_embd.weight", &[32, 4], 0, 0);
        g.tensor("blk.0.attn_q.weight", &[32, 2], 8, 512);
        g.data_start = g.bytes.len().div_ceil(32) * 32;
        g.bytes.resize(g.data_start, 0);
        for i in 0..512 + 68 {
            g.bytes.push((i % 251) as u8);
        }
        g
    }

    fn field(&mut self, width: usize) {
        self.fields.push(Field {
            at: self.bytes.len(),
            width,
        });
    }

    fn u32(&mut self, v: u32) {
        self.field(4);
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.field(8);
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, key: &str, value_type: u32) {
        self.string(key);
        self.u32(value_type);
    }

    fn tensor(&mut self, name: &str, dims: &[u64], dtype: u32, offset: u64) {
        self.string(name);
        self.u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(dtype);
        self.u64(offset);
    }
}

/// How a file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// A header field set to a value (written in the field's width).
    Field(usize, u64),
    /// A header byte overwritten.
    Byte(usize, u8),
    /// The file cut to this many bytes.
    Truncate(usize),
}

fn field_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            3,
            4,
            5,
            7,
            9,
            13,
            16,
            31,
            33,
            255,
            256,
            1 << 16,
            u32::MAX as u64,
            1 << 32,
            1 << 40,
            1 << 62,
            i64::MAX as u64,
            u64::MAX,
            u64::MAX - 511,
        ]),
        any::<u64>(),
        0u64..64,
    ]
}

fn damage(fields: usize, header: usize, len: usize) -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        4 => (0..fields, field_value()).prop_map(|(f, v)| Damage::Field(f, v)),
        2 => (0..header, any::<u8>()).prop_map(|(at, b)| Damage::Byte(at, b)),
        1 => (0..=len).prop_map(Damage::Truncate),
    ];
    prop::collection::vec(one, 1..4)
}

fn apply(bytes: &mut Vec<u8>, fields: &[Field], damage: &[Damage]) {
    for d in damage {
        match *d {
            Damage::Field(f, v) => {
                let Field { at, width } = fields[f];
                if at + width <= bytes.len() {
                    bytes[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            Damage::Byte(at, b) => {
                if at < bytes.len() {
                    bytes[at] = b;
                }
            }
            Damage::Truncate(len) => bytes.truncate(len),
        }
    }
}

/// Opens `path` as the engine does; on success checks what it accepted.
fn open_checked(path: &Path) -> Result<(), TestCaseError> {
    match Gguf::open(path) {
        Err(err) => {
            let message = err.to_string();
            prop_assert!(
                message.contains("is not a valid GGUF model file"),
                "{}",
                message
            );
        }
        Ok(gguf) => {
            // An independent check that every tensor it accepted lies in the file.
            let bytes = std::fs::read(path).unwrap();
            let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes[..])).unwrap();
            for (name, info) in &content.tensor_infos {
                let elems = info
                    .shape
                    .dims()
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
                let size = elems.map(|e| {
                    e / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64
                });
                let end =
                    size.and_then(|s| s.checked_add(content.tensor_data_offset + info.offset));
                prop_assert!(
                    end.is_some_and(|end| end <= bytes.len() as u64),
                    "tensor {} accepted past the end",
                    name
                );
                // Reading it is an answer or an error, not a panic.
                let _ = gguf.tensor(name, &Device::Cpu);
            }
            // The model loader's metadata reads on whatever was accepted.
            let _ = showdown_engine::Model::from_gguf(&gguf, &Device::Cpu);
        }
    }
    Ok(())
}

#[test]
fn the_tiny_gguf_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let tiny = TinyGguf::new();
    std::fs::write(&path, &tiny.bytes).unwrap();
    let gguf = Gguf::open(&path).unwrap();
    assert_eq!(gguf.architecture(), "llama");
    assert_eq!(gguf.vocab_size().unwrap(), 3);
    assert_eq!(gguf.tensor_elem_count("token_embd.weight"), Some(128));
    let q = gguf.tensor("blk.0.attn_q.weight", &Device::Cpu).unwrap();
    assert_eq!(q.shape().dims(), &[2, 32]);
}

/// The damage candle's parser alone let through, each refused by name.
#[test]
fn known_bad_headers_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let tiny = TinyGguf::new();
    let fields = &tiny.fields;
    // Field numbers, in the order TinyGguf writes them.
    let alignment = 8; // general.alignment's value
                       // The first tensor's: name length, dimension count, two dimensions,
                       // type, offset; then the second tensor's six.
    let embd_dims = (fields.len() - 10, fields.len() - 9);
    let embd_type = fields.len() - 8;
    let embd_offset = fields.len() - 7;
    for (damage, expected) in [
        (
            vec![Damage::Field(alignment, 0)],
            "general.alignment 0 is not a power of two",
        ),
        (
            vec![
                Damage::Field(embd_dims.0, 1 << 32),
                Damage::Field(embd_dims.1, 1 << 32),
            ],
            "its dimensions' product overflows",
        ),
        (
            vec![Damage::Field(embd_dims.0, 1 << 61)],
            "its size in bytes overflows",
        ),
        (vec![Damage::Field(embd_type, 77)], "has unknown type id 77"),
        (
            vec![Damage::Field(embd_offset, u64::MAX - 31)],
            "ends past the file's",
        ),
        (
            vec![Damage::Field(embd_offset, 128)],
            "ends past the file's",
        ),
        (
            vec![Damage::Field(embd_offset, 33)],
            "offset 33 is not a multiple of the alignment 32",
        ),
        (vec![Damage::Field(embd_dims.1, 0)], "has a dimension of 0"),
        (vec![Damage::Field(1, u64::MAX)], "remain"),
        (vec![Damage::Field(3, u64::MAX)], "remain (truncated?)"),
        (
            vec![Damage::Truncate(tiny.data_start + 100)],
            "(truncated?)",
        ),
    ] {
        let mut bytes = tiny.bytes.clone();
        apply(&mut bytes, fields, &damage);
        std::fs::write(&path, &bytes).unwrap();
        let err = Gguf::open(&path).err().expect(expected).to_string();
        assert!(err.contains(expected), "{damage:?}: {expected:?} in {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn gguf_loader_refuses_damaged_tiny_files(damages in {
        let tiny = TinyGguf::new();
        damage(tiny.fields.len(), tiny.data_start, tiny.bytes.len())
    }) {
        let tiny = TinyGguf::new();
        let mut bytes = tiny.bytes.clone();
        apply(&mut bytes, &tiny.fields, &damages);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.gguf");
        std::fs::write(&path, &bytes).unwrap();
        open_checked(&path)?;
    }
}

/// The pinned SmolLM2 file's header (its first bytes, through the tensor
/// infos) and its full length.
fn real_header() -> &'static (Vec<u8>, u64) {
    static HEADER: std::sync::OnceLock<(Vec<u8>, u64)> = std::sync::OnceLock::new();
    HEADER.get_or_init(|| {
        let path = pinned_model_path("smollm2-135m");
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let mut reader = std::io::BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let mut bytes = vec![0u8; content.tensor_data_offset as usize];
        reader.seek(std::io::SeekFrom::Start(0)).unwrap();
        reader.read_exact(&mut bytes).unwrap();
        (bytes, len)
    })
}

/// A file with `header` and then zeros up to `len` (sparse: no data written).
fn write_sparse(path: &PathBuf, header: &[u8], len: u64) {
    std::fs::write(path, header).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), failure_persistence: None, ..ProptestConfig::default() })]

    /// The real model's header, bytes overwritten or the file cut short:
    /// the header region is what is parsed; the tensor data is never read.
    #[test]
    fn gguf_loader_refuses_damaged_real_headers(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (header, len) = real_header();
        let mut bytes = header.clone();
        for (at, b) in flips {
            let at = at.index(bytes.len());
            bytes[at] = b;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.gguf");
        match cut {
            // Cut inside the header.
            Some(at) => std::fs::write(&path, &bytes[..at.index(bytes.len())]).unwrap(),
            None => write_sparse(&path, &bytes, *len),
        }
        open_checked(&path)?;
    }
}

// ---- the sandbox -----------------------------------------------------------------

/// A fixture with a secret beside it, reachable only by escaping.
struct Fixture {
    parent: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("repo");
        std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
        std::fs::write(root.join("README.md"), "# demo\nport 7341\n").unwrap();
        let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(root.join("src/long.txt"), long).unwrap();
        std::fs::write(root.join("src/empty.txt"), "").unwrap();
        std::fs::write(root.join("src/deep/er/bin.dat"), [0u8, 159, 146, 150]).unwrap();
        std::fs::write(parent.path().join("secret.txt"), "TOP SECRET\n").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(parent.path().join("secret.txt"), root.join("out")).unwrap();
            std::os::unix::fs::symlink(parent.path(), root.join("up")).unwrap();
            std::os::unix::fs::symlink("README.md", root.join("in")).unwrap();
        }
        Self { parent }
    }

    fn sandbox(&self) -> Sandbox {
        Sandbox::new(self.parent.path().join("repo")).unwrap()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(Fixture::new)
}

/// The numbers a model may give: huge, negative, fractional.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(2),
            json!(99),
            json!(100),
            json!(101),
            json!(u64::MAX),
            json!(u64::MAX - 1),
            json!(i64::MAX),
            json!(1u64 << 32),
            json!(-1),
            json!(i64::MIN),
            json!(1.5),
            json!(1e300),
            json!(-0.0),
        ]),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]
}

/// Paths a model may give: escapes, symlinks, globs, odd bytes.
fn hostile_path() -> impl Strategy<Value = Value> {
    let fragments = vec![
        "/repo",
        "/repo/",
        "repo",
        ".",
        "..",
        "/",
        "//",
        "~",
        "src",
        "long.txt",
        "README.md",
        "out",
        "up",
        "in",
        "secret.txt",
        "*",
        "**",
        "?",
        "[",
        "]",
        "{a,b}",
        "\\",
        "\0",
        "%2e%2e",
        "/etc/passwd",
        "/proc/self/environ",
        " ",
        "é",
        "deep",
        "er",
        "bin.dat",
    ];
    prop_oneof![
        prop::collection::vec(prop::sample::select(fragments), 0..6)
            .prop_map(|parts| Value::from(parts.join("/"))),
        "\\PC{0,24}".prop_map(Value::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => hostile_path(),
        4 => hostile_number(),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => prop::collection::vec(hostile_path(), 0..3).prop_map(Value::from),
        1 => Just(json!({"nested": "/repo/../secret.txt"})),
    ]
}

fn tool_call() -> impl Strategy<Value = (String, Value)> {
    let keys = vec![
        "file_path",
        "offset",
        "limit",
        "pattern",
        "path",
        "glob",
        "output_mode",
        "-i",
        "-n",
        "-A",
        "-B",
        "-C",
        "type",
        "head_limit",
        "ignore",
        "extra",
    ];
    let tool = prop::sample::select(vec!["Read", "Glob", "Grep", "LS", "Write", ""]);
    let args = prop::collection::btree_map(prop::sample::select(keys), hostile_value(), 0..6);
    let mode = prop::sample::select(vec!["content", "count", "files_with_matches", "other"]);
    (tool, args, mode).prop_map(|(tool, args, mode)| {
        let mut input: serde_json::Map<String, Value> =
            args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if input.contains_key("output_mode") {
            input.insert("output_mode".into(), json!(mode));
        }
        (tool.to_string(), Value::Object(input))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sandbox_tools_survive_hostile_arguments((tool, input) in tool_call()) {
        let output = fixture().sandbox().run(&tool, &input);
        prop_assert!(!output.content.contains("TOP SECRET"), "escaped: {}", output.content);
        prop_assert!(output.content.len() <= OUTPUT_LIMIT_BYTES + 256, "{} bytes", output.content.len());
        prop_assert!(!output.content.is_empty());
    }
}

/// The sums that overflowed on a model's huge numbers (`offset - 1 + limit`,
/// `hit + after`) now read to the end.
#[test]
fn huge_numbers_read_to_the_end() {
    let sandbox = fixture().sandbox();
    let read = sandbox.run(
        "Read",
        &json!({"file_path": "/repo/src/long.txt", "offset": 99, "limit": u64::MAX}),
    );
    assert!(!read.is_error, "{}", read.content);
    assert!(read.content.contains("line 100"));
    assert!(!read.content.contains("more lines"), "{}", read.content);
    let past = sandbox.run(
        "Read",
        &json!({"file_path": "/repo/src/long.txt", "offset": u64::MAX}),
    );
    assert!(
        past.is_error && past.content.contains("is past the end"),
        "{}",
        past.content
    );
    for context in ["-A", "-B", "-C"] {
        let mut input = json!({"pattern": "line 99$", "path": "/repo/src", "output_mode": "content", "head_limit": u64::MAX});
        input[context] = json!(u64::MAX);
        let grep = sandbox.run("Grep", &input);
        assert!(!grep.is_error, "{context}: {}", grep.content);
        assert!(
            grep.content.contains("long.txt:99:line 99"),
            "{}",
            grep.content
        );
    }
    let negative = sandbox.run(
        "Read",
        &json!({"file_path": "/repo/README.md", "limit": -1}),
    );
    assert!(negative.content.contains("must be a non-negative integer"));
}
