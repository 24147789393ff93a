//! What `tollgate bench` sends: the built-in prompt mixes, or a body from a file.

use bytes::Bytes;

use super::BenchOptions;

/// Built-in request mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A one-line chat question, 16 completion tokens.
    ShortChat,
    /// A multi-turn chat of about 4 KB, 128 completion tokens.
    LongChat,
    /// Two short texts to embed.
    Embeddings,
    /// The short chat, streamed.
    StreamChat,
}

const SHORT: &str = r#"{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hello! How are you today?"}],"max_tokens":16}"#;
const EMBEDDINGS: &str =
    r#"{"input":["The quick brown fox jumps over the lazy dog.","Token buckets refill continuously."]}"#;
const STREAM: &str = r#"{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hello! How are you today?"}],"max_tokens":16,"stream":true}"#;

fn long_chat() -> String {
    let turn = "Explain, with an example, how a token bucket refills continuously and why a gateway reserves tokens before it forwards a request. ";
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are a patient teacher."})];
    for i in 0..12 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": turn.repeat(2)}));
    }
    serde_json::json!({"messages": messages, "max_tokens": 128}).to_string()
}

pub fn check(options: &BenchOptions) -> Result<(), String> {
    let url = options.url.as_str();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("--url '{url}' must start with http:// or https://"));
    }
    if let Some(d) = &options.deployment {
        crate::config::check_deployment_name(d).map_err(|e| format!("--deployment: {e}"))?;
    }
    Ok(())
}

/// Path, body and whether the response streams, for request number `n`.
pub fn request(options: &BenchOptions, _n: u64) -> (String, Bytes, bool) {
    let route = match options.mix {
        Mix::Embeddings => "/embeddings",
        _ => "/chat/completions",
    };
    let path = match &options.deployment {
        Some(d) => format!("/openai/deployments/{d}{route}"),
        None => route.to_owned(),
    };
    let body = match (&options.body, options.mix) {
        (Some(body), _) => body.clone(),
        (None, Mix::ShortChat) => Bytes::from_static(SHORT.as_bytes()),
        (None, Mix::LongChat) => Bytes::from(long_chat()),
        (None, Mix::Embeddings) => Bytes::from_static(EMBEDDINGS.as_bytes()),
        (None, Mix::StreamChat) => Bytes::from_static(STREAM.as_bytes()),
    };
    let stream = options.mix == Mix::StreamChat
        || options
            .body
            .as_ref()
            .is_some_and(|b| String::from_utf8_lossy(b).replace(' ', "").contains("\"stream\":true"));
    (path, body, stream)
}
