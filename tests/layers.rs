//! The layers of `src/` import one way (ARCHITECTURE.md): each file may use only its own layer
//! and those below it, the two planes never import each other, and `core` uses no HTTP, async
//! runtime or network crate. Strict ranks between the top-level modules also mean there is no
//! import cycle between them. The check reads every `crate::` path in `src/` (doc comments
//! aside); the planted-import tests show that it fails when a rule is broken.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// The layers, bottom first.
const LAYERS: [&str; 5] = ["core", "config", "state", "planes", "process"];

/// Crates that `core` must not use: it is pure logic, testable and fuzzable without them.
const NOT_IN_CORE: [&str; 10] = [
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "http",
    "http_body",
    "http_body_util",
    "tokio",
    "tokio_rustls",
    "rustls",
    "redis",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// What in `text` (the file `path`, relative to `src/`) breaks the rules.
fn violations(path: &str, text: &str) -> Vec<String> {
    let mut parts = path.split('/');
    let layer = parts.next().unwrap_or_default();
    let Some(own) = rank(layer) else { return Vec::new() }; // lib.rs and main.rs: the crate's roots
    let plane = if layer == "planes" { parts.next().map(|p| p.trim_end_matches(".rs")) } else { None };
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let at = format!("{path}:{}", n + 1);
        for (i, _) in code.match_indices("crate::") {
            // `tollgate::crate::` cannot occur; skip `$crate::` in macros.
            if code[..i].ends_with('$') {
                continue;
            }
            let mut names = code[i + "crate::".len()..]
                .split("::")
                .map(|s| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or_default());
            let target = names.next().unwrap_or_default();
            let Some(theirs) = rank(target) else { continue };
            if theirs > own {
                found.push(format!("{at}: {layer} imports {target}, a layer above it: {}", code.trim()));
            }
            if let (Some(mine), "planes") = (plane, target) {
                let other = names.next().unwrap_or_default();
                if matches!((mine, other), ("data", "control") | ("control", "data")) {
                    found.push(format!(
                        "{at}: planes::{mine} imports planes::{other}; the planes do not import each other: {}",
                        code.trim()
                    ));
                }
            }
        }
        if layer == "core" {
            for name in NOT_IN_CORE {
                let used = code.match_indices(name).any(|(i, _)| {
                    let before = code[..i].chars().next_back();
                    let after = &code[i + name.len()..];
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                        && (after.starts_with("::") || (code.starts_with("use ") && after.starts_with(';')))
                });
                if used {
                    found.push(format!("{at}: core uses `{name}`: {}", code.trim()));
                }
            }
        }
    }
    found
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn tree() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &root, &mut files);
    files.sort();
    files
}

#[test]
fn every_import_in_src_runs_down_the_layers() {
    let files = tree();
    for layer in LAYERS {
        assert!(files.iter().any(|(p, _)| p.starts_with(&format!("{layer}/"))), "no files in src/{layer}");
    }
    let found: Vec<String> = files.iter().flat_map(|(p, t)| violations(p, t)).collect();
    assert!(found.is_empty(), "imports against the layers:\n{}", found.join("\n"));
}

#[test]
fn every_source_file_sits_in_a_layer() {
    for (path, _) in tree() {
        let top = path.split('/').next().unwrap();
        assert!(
            rank(top).is_some() || path == "lib.rs" || path == "main.rs",
            "src/{path} is in no layer: put it under src/{{{}}}",
            LAYERS.join(",")
        );
    }
}

/// A real file of the tree with one line added at its top.
fn planted(path: &str, line: &str) -> Vec<String> {
    let (_, text) = tree().into_iter().find(|(p, _)| p == path).expect(path);
    violations(path, &format!("{line}\n{text}"))
}

#[test]
fn the_check_fails_on_a_planted_upward_import() {
    let found = planted("core/quota/mod.rs", "use crate::state::metrics::Metrics;");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("core imports state, a layer above it"), "{found:?}");
    assert!(!planted("config/mod.rs", "use crate::planes::data::Gateway;").is_empty());
    assert!(
        !planted("state/deployment.rs", "    let x = crate::process::runtime::StartOptions::default();").is_empty()
    );
    assert!(!planted("planes/data/mod.rs", "use crate::process::server::ServeOptions;").is_empty());
    // Downward and same-layer imports pass.
    assert!(planted("planes/data/mod.rs", "use crate::state::metrics::Metrics;").is_empty());
    assert!(planted("state/deployment.rs", "use crate::state::metrics::Metrics;").is_empty());
}

#[test]
fn the_check_fails_when_the_planes_import_each_other() {
    let found = planted("planes/control/admin.rs", "use crate::planes::data::Gateway;");
    assert!(found.iter().any(|f| f.contains("the planes do not import each other")), "{found:?}");
    assert!(!planted("planes/data/route.rs", "use crate::planes::control::ControlPlane;").is_empty());
    assert!(planted("planes/data/route.rs", "use crate::planes::respond::error_response;").is_empty());
}

#[test]
fn the_check_fails_when_core_uses_http_or_tokio() {
    for line in
        ["use http::HeaderValue;", "    tokio::spawn(async {});", "use hyper;", "fn f(_: &hyper::body::Incoming) {}"]
    {
        assert!(!planted("core/meter/sse.rs", line).is_empty(), "{line}");
    }
    // Names that merely contain one (`http_version`, `self.tokio_x`) are not uses.
    assert!(planted("core/meter/sse.rs", "// tokio::spawn in a comment").is_empty());
    assert!(planted("core/meter/sse.rs", "fn http_version() {}").is_empty());
}
