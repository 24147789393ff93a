//! The real binary: the embedded demo (the README's first command), `keys generate`, `check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

#[test]
fn the_embedded_demo_prints_a_key_and_a_curl_line_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let curl = loop {
        let line = lines.next().expect("the demo exited before printing its curl line").unwrap();
        banner.push(line.clone());
        if line.trim_start().starts_with("curl ") {
            break line;
        }
    };
    let key = banner.iter().find_map(|l| l.trim().strip_prefix("key:")).unwrap().trim().to_owned();
    assert_eq!(key.len(), 32, "{banner:?}");
    assert!(banner.iter().any(|l| l.contains("endpoint:") && l.contains("/openai/deployments/meta-llama3-8b-qwerty")));
    assert!(curl.contains(&key));

    if Command::new("curl").arg("--version").output().is_ok() {
        let output = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["object"], "chat.completion", "{json}");
        assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    } else {
        println!("curl is not installed: the pasted-curl check was skipped");
    }

    // SIGTERM: a clean exit, with the demo's ledger written in the working directory.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    assert!(banner.iter().any(|l| l.contains("ledger:") && l.contains("tollgate-usage.jsonl")));
    if Command::new("curl").arg("--version").output().is_ok() {
        let ledger = std::fs::read_to_string(dir.path().join("tollgate-usage.jsonl")).unwrap();
        assert_eq!(ledger.lines().count(), 1, "{ledger}");
    }
}

#[test]
fn keys_generate_prints_a_key_and_its_digest() {
    let output = Command::new(BIN).args(["keys", "generate"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_owned();
    let key = field("key:");
    let stored = field("stored:");
    assert_eq!(key.len(), 32);
    assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(stored, tollgate::core::keys::KeyDigest::of(key.as_bytes()).to_stored());
}

#[test]
fn check_accepts_the_example_and_names_file_line_and_field_of_errors() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.example.toml");
    let ok = Command::new(BIN).args(["check", "--config", example]).env("LLAMA_BACKEND_KEY", "k").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let missing_env =
        Command::new(BIN).args(["check", "--config", example]).env_remove("LLAMA_BACKEND_KEY").output().unwrap();
    assert!(!missing_env.status.success());
    assert!(String::from_utf8_lossy(&missing_env.stderr).contains("LLAMA_BACKEND_KEY"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = \"typo\"\n").unwrap();
    let bad = Command::new(BIN).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&format!("{}:3:", path.display())), "{stderr}");
    assert!(stderr.contains("lisen"), "{stderr}");

    let absent = Command::new(BIN).args(["check", "--config", "/nonexistent/tollgate.toml"]).output().unwrap();
    assert!(!absent.status.success());
    assert!(String::from_utf8_lossy(&absent.stderr).contains("/nonexistent/tollgate.toml"));
}

#[test]
fn serve_with_a_config_refuses_a_taken_port_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.example.toml");
    let output = Command::new(BIN)
        .args(["serve", "--config", example, "--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .env("LLAMA_BACKEND_KEY", "k")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("cannot listen on {addr}")));
}

#[test]
fn check_refuses_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.toml");
    std::fs::write(&blank, "\n  \n").unwrap();
    for empty in ["/dev/null", blank.to_str().unwrap()] {
        let out = Command::new(BIN).args(["check", "--config", empty]).output().unwrap();
        assert!(!out.status.success(), "an empty file is not a valid configuration");
        assert!(String::from_utf8_lossy(&out.stderr).contains("the file is empty"), "{out:?}");
    }
}

#[test]
fn check_refuses_a_backend_key_that_cannot_be_a_header_naming_the_variable_only() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.example.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .env("LLAMA_BACKEND_KEY", "TrailingNewlineKey0123456789\n")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a key that would be dropped must stop the load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LLAMA_BACKEND_KEY") && stderr.contains("cannot be sent as a header"), "{stderr}");
    assert!(!stderr.contains("TrailingNewlineKey"), "the value is never printed: {stderr}");
}
