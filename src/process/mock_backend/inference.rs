//! What the mock backend answers on each route.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Behaviour, MockBody, MockOptions};

pub type Failure = (StatusCode, &'static str, String);

const WORDS: [&str; 12] =
    ["Hello", " from", " the", " tollgate", " mock", " backend", ",", " one", " token", " at", " a", " time."];
const MESSAGE_OVERHEAD: u64 = 4;
const PROMPT_OVERHEAD: u64 = 3;
pub(super) const IMAGE_TOKENS: u64 = 85;

/// `ceil(chars / 4)`: the mock's deterministic token count of a text.
pub fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

pub fn info(options: &MockOptions) -> Bytes {
    Bytes::from(
        json!({"model_name": options.model_name, "model_type": "chat-completions", "model_provider_name": "Meta"})
            .to_string(),
    )
}

pub(super) fn parse(body: &[u8]) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, "InvalidJson", format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err((StatusCode::BAD_REQUEST, "InvalidJson", "the body must be a JSON object".into()));
    }
    Ok(value)
}

fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => text_tokens(text),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => part.get("text").and_then(Value::as_str).map_or(0, text_tokens),
                Some("image_url") => IMAGE_TOKENS,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

fn chat_prompt_tokens(request: &Value) -> Result<u64, Failure> {
    let messages = request.get("messages").and_then(Value::as_array).ok_or_else(|| {
        (StatusCode::UNPROCESSABLE_ENTITY, "UserError", "'messages' is required and must be an array".to_owned())
    })?;
    let mut tokens = PROMPT_OVERHEAD;
    for message in messages {
        tokens += MESSAGE_OVERHEAD;
        tokens += message.get("content").map_or(0, content_tokens);
        tokens += message.get("name").and_then(Value::as_str).map_or(0, text_tokens);
        if let Some(calls) = message.get("tool_calls") {
            tokens += text_tokens(&calls.to_string());
        }
    }
    if let Some(tools) = request.get("tools") {
        tokens += text_tokens(&tools.to_string());
    }
    Ok(tokens)
}

/// Completion length and finish reason after `max_tokens`.
fn completion_len(request: &Value, behaviour: &Behaviour) -> (u32, &'static str) {
    match request.get("max_tokens").and_then(Value::as_u64) {
        Some(max) if max < u64::from(behaviour.completion_tokens) => (max as u32, "length"),
        _ => (behaviour.completion_tokens, "stop"),
    }
}

/// The i-th token of every completion: the words cycle, with a space before each repeat.
fn word(i: usize) -> &'static str {
    if i > 0 && i % WORDS.len() == 0 { " Hello" } else { WORDS[i % WORDS.len()] }
}

fn completion_text(tokens: u32) -> String {
    (0..tokens as usize).map(word).collect()
}

pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn id() -> String {
    format!("cmpl-{:032x}", rand::random::<u128>())
}

fn usage(prompt: u64, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + u64::from(completion)})
}

/// `n`: how many choices to answer (1 to 16).
fn choices(request: &Value) -> u32 {
    request.get("n").and_then(Value::as_u64).map_or(1, |n| n.clamp(1, 16) as u32)
}

/// The tool call the mock makes when `tools` are given (and `tool_choice` is not "none"): the
/// tool `tool_choice` names, else the first, with each required parameter filled by its type.
fn tool_call(request: &Value) -> Option<Value> {
    let tools = request.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty())?;
    let choice = request.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") {
        return None;
    }
    let wanted = choice.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str);
    let function = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .find(|f| wanted.is_none_or(|w| f.get("name").and_then(Value::as_str) == Some(w)))?;
    let name = function.get("name").and_then(Value::as_str).unwrap_or("tool");
    let parameters = function.get("parameters");
    let mut arguments = serde_json::Map::new();
    let required = parameters.and_then(|p| p.get("required")).and_then(Value::as_array);
    for field in required.into_iter().flatten().filter_map(Value::as_str) {
        let kind = parameters.and_then(|p| p.pointer(&format!("/properties/{field}/type"))).and_then(Value::as_str);
        let value = match kind {
            Some("integer" | "number") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!("mock"),
        };
        arguments.insert(field.to_owned(), value);
    }
    Some(json!({"id": format!("call_{:016x}", rand::random::<u64>()), "type": "function",
                "function": {"name": name, "arguments": Value::Object(arguments).to_string()}}))
}

pub fn chat(options: &MockOptions, behaviour: &Behaviour, body: &[u8]) -> Result<Response<MockBody>, Failure> {
    let request = parse(body)?;
    let prompt = chat_prompt_tokens(&request)?;
    let n = choices(&request);
    let call = tool_call(&request);
    let (tokens, finish) = match &call {
        Some(call) => (text_tokens(&call["function"].to_string()) as u32, "tool_calls"),
        None => completion_len(&request, behaviour),
    };
    let (id, created, model) = (id(), now(), options.model_name.as_str());
    let completion = tokens.saturating_mul(n);
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let head = |index: u32, delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": null}]})
        };
        let mut events = Vec::with_capacity((tokens as usize + 2) * n as usize);
        for index in 0..n {
            match &call {
                Some(call) => {
                    let mut opening = call.clone();
                    opening["index"] = json!(0);
                    opening["function"]["arguments"] = json!("");
                    events.push(head(
                        index,
                        json!({"role": "assistant", "content": null, "tool_calls": [opening]}),
                        None,
                    ));
                    let arguments = call["function"]["arguments"].clone();
                    events.push(head(
                        index,
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
                        None,
                    ));
                }
                None => events.push(head(index, json!({"role": "assistant", "content": ""}), None)),
            }
        }
        if call.is_none() {
            for i in 0..tokens as usize {
                for index in 0..n {
                    events.push(head(index, json!({"content": word(i)}), None));
                }
            }
        }
        for index in 0..n {
            events.push(head(index, json!({}), Some(finish)));
        }
        if behaviour.stream_usage {
            if let Some(last) = events.last_mut() {
                last["usage"] = usage(prompt, completion);
            }
        }
        return Ok(charged(stream(events, behaviour), prompt + u64::from(completion)));
    }
    let message = match &call {
        Some(call) => json!({"role": "assistant", "content": null, "tool_calls": [call]}),
        None => json!({"role": "assistant", "content": completion_text(tokens), "tool_calls": null}),
    };
    let choices: Vec<Value> = (0..n)
        .map(|index| json!({"index": index, "finish_reason": finish, "message": message, "logprobs": null}))
        .collect();
    let answer = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": choices,
        "usage": usage(prompt, completion),
    });
    Ok(charged(whole_answer(answer, behaviour), prompt + u64::from(completion)))
}

pub fn completions(options: &MockOptions, behaviour: &Behaviour, body: &[u8]) -> Result<Response<MockBody>, Failure> {
    let request = parse(body)?;
    let prompt = match request.get("prompt") {
        Some(Value::String(text)) => text_tokens(text),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(text_tokens).sum(),
        _ => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "UserError",
                "'prompt' is required (a string or an array of strings)".into(),
            ));
        }
    };
    let (tokens, finish) = completion_len(&request, behaviour);
    let n = choices(&request);
    let completion = tokens.saturating_mul(n);
    let (id, created, model) = (id(), now(), options.model_name.as_str());
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        let head = |index: u32, text: &str, finish: Option<&str>| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": null}]})
        };
        let mut events: Vec<Value> = (0..tokens as usize)
            .flat_map(|i| (0..n).map(move |index| (index, i)))
            .map(|(index, i)| head(index, word(i), None))
            .collect();
        for index in 0..n {
            events.push(head(index, "", Some(finish)));
        }
        if behaviour.stream_usage {
            if let Some(last) = events.last_mut() {
                last["usage"] = usage(prompt, completion);
            }
        }
        return Ok(charged(stream(events, behaviour), prompt + u64::from(completion)));
    }
    let text = completion_text(tokens);
    let choices: Vec<Value> =
        (0..n).map(|index| json!({"index": index, "text": text, "finish_reason": finish, "logprobs": null})).collect();
    let answer = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices,
        "usage": usage(prompt, completion),
    });
    Ok(charged(whole_answer(answer, behaviour), prompt + u64::from(completion)))
}

/// The tokens an answer bills, for the mock's own quota ([`super::MockQuota`]).
#[derive(Clone, Copy, Debug)]
pub struct Charged(pub u64);

fn charged(mut response: Response<MockBody>, tokens: u64) -> Response<MockBody> {
    response.extensions_mut().insert(Charged(tokens));
    response
}

/// A non-streamed answer, without its `usage` when `x-mock-no-usage` asked for none.
fn whole_answer(mut answer: Value, behaviour: &Behaviour) -> Response<MockBody> {
    if !behaviour.body_usage {
        answer.as_object_mut().map(|a| a.remove("usage"));
    }
    json_ok(answer)
}

fn json_ok(value: Value) -> Response<MockBody> {
    let mut response = Response::new(MockBody::Full(Some(Bytes::from(value.to_string()))));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Streams events as SSE from a task, paced by `tokens_per_second`, optionally dying midway.
fn stream(events: Vec<Value>, behaviour: &Behaviour) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(16);
    let pause = (behaviour.tokens_per_second > 0).then(|| Duration::from_secs(1) / behaviour.tokens_per_second);
    let latency = behaviour.latency;
    let die_after = behaviour.die_after;
    let stall_after = behaviour.stall_after;
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        for (sent, event) in events.into_iter().enumerate() {
            if stall_after.is_some_and(|n| sent as u32 >= n) {
                // Keep the stream open and silent until the reader goes away.
                tx.closed().await;
                return;
            }
            if die_after.is_some_and(|n| sent as u32 > n) {
                tokio::time::sleep(super::body::DEATH_DELAY).await;
                let _ = tx.send(Err(std::io::Error::other("mock backend died mid-stream"))).await;
                return;
            }
            if let Some(pause) = pause.filter(|_| sent > 0) {
                tokio::time::sleep(pause).await;
            }
            if tx.send(Ok(Bytes::from(format!("data: {event}\n\n")))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let mut response = Response::new(MockBody::Stream(rx));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_are_deterministic() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        let request = json!({"messages": [{"role": "user", "content": "Hello there"}]});
        assert_eq!(chat_prompt_tokens(&request).unwrap(), 3 + 4 + 3);
        let parts = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(chat_prompt_tokens(&parts).unwrap(), 3 + 4 + 1 + 85);
    }

    #[test]
    fn tool_calls_fill_required_parameters_by_type() {
        let request = json!({"tools": [{"type": "function", "function": {"name": "other"}},
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object",
             "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city", "days"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}}});
        let call = tool_call(&request).unwrap();
        assert_eq!(call["function"]["name"], "weather");
        let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "mock", "days": 1}));
        assert!(tool_call(&json!({"tools": request["tools"], "tool_choice": "none"})).is_none());
        assert!(tool_call(&json!({"messages": []})).is_none());
    }
}
