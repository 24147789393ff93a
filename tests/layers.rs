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
    // Comment lines blanked (doc links name paths without importing them); line numbers kept.
    let code: String =
        text.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect::<Vec<_>>().join("\n");
    let line_of = |i: usize| code[..i].matches('\n').count() + 1;
    let shown = |i: usize| code.lines().nth(line_of(i) - 1).unwrap_or_default().trim().to_owned();
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        // `$crate::` in macros is not an import of ours.
        if code[..i].ends_with('$') {
            continue;
        }
        let at = format!("{path}:{}", line_of(i));
        for written in paths_after(&code[i + "crate::".len()..]) {
            let mut names = written.split("::");
            let target = names.next().unwrap_or_default();
            let Some(theirs) = rank(target) else { continue };
            if theirs > own {
                found.push(format!("{at}: {layer} imports {target}, a layer above it: {}", shown(i)));
            }
            if let (Some(mine), "planes") = (plane, target) {
                let other = names.next().unwrap_or_default();
                if matches!((mine, other), ("data", "control") | ("control", "data")) {
                    found.push(format!(
                        "{at}: planes::{mine} imports planes::{other}; the planes do not import each other: {}",
                        shown(i)
                    ));
                }
            }
        }
    }
    // `super::super::` climbs out of a layer's module without naming where to: not used, banned.
    for (i, _) in code.match_indices("super::super") {
        found.push(format!("{path}:{}: `super::super` hides which layer is imported; write `crate::...`", line_of(i)));
    }
    if layer == "core" {
        for (n, line) in code.lines().enumerate() {
            for name in NOT_IN_CORE {
                let used = line.match_indices(name).any(|(i, _)| {
                    let before = line[..i].chars().next_back();
                    let after = &line[i + name.len()..];
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                        && (after.starts_with("::")
                            || (line.trim_start().starts_with("use ") && after.starts_with(';')))
                });
                if used {
                    found.push(format!("{path}:{}: core uses `{name}`: {}", n + 1, line.trim()));
                }
            }
        }
    }
    found
}

/// The paths written after one `crate::`: `a::b` gives `a::b`; a group `{a::b, c::{d, e}}`
/// (on one line or many) gives `a::b` and `c::` (the first names are what the rules look at).
fn paths_after(rest: &str) -> Vec<String> {
    let path = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect()
    };
    let Some(group) = rest.strip_prefix('{') else { return vec![path(rest)] };
    let mut paths = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                paths.push(path(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                paths.push(path(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
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
fn the_check_reads_grouped_imports_and_refuses_super_super() {
    let found = planted("core/keys.rs", "use crate::{core::api::ApiRoute, state::metrics::Metrics};");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("core imports state"), "{found:?}");
    // As rustfmt writes a long group: over several lines.
    let found = planted(
        "planes/data/auth.rs",
        "use crate::{\n    state::record::Outcome,\n    planes::control::ControlPlane,\n};",
    );
    assert!(found.iter().any(|f| f.contains("the planes do not import each other")), "{found:?}");
    assert!(
        planted("planes/data/auth.rs", "use crate::{core::api::ApiRoute, state::record::{Outcome, UsageRecord}};")
            .is_empty()
    );
    assert!(!planted("state/ledger/writer.rs", "use super::super::metrics::Metrics;").is_empty());
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
