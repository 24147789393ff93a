//! Reading `usage` (and, when it is missing, the completion text) out of backend responses.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Token counts as a backend reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

/// Parses a `usage` object; `None` when it is null, malformed or holds no counts.
/// Embeddings report no `completion_tokens`: it is then `total - prompt`.
pub fn parse_usage(raw: &RawValue) -> Option<Usage> {
    let usage: RawUsage = serde_json::from_str(raw.get()).ok()?;
    let prompt = usage.prompt_tokens;
    let completion = usage.completion_tokens;
    let total = usage.total_tokens;
    let (prompt, completion, total) = match (prompt, completion, total) {
        (Some(p), Some(c), Some(t)) => (p, c, t),
        (Some(p), Some(c), None) => (p, c, p.saturating_add(c)),
        (Some(p), None, Some(t)) => (p, t.saturating_sub(p), t),
        (Some(p), None, None) => (p, 0, p),
        (None, Some(c), Some(t)) => (t.saturating_sub(c), c, t),
        (None, None, Some(t)) => (t, 0, t),
        _ => return None,
    };
    Some(Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total })
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
    /// Streamed chat chunks carry `delta` in place of `message`.
    #[serde(borrow, default)]
    delta: Option<Message<'a>>,
    /// Legacy completions.
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// The parts of a response body or streamed event the meter reads.
#[derive(Deserialize)]
pub struct Answer<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

/// Only the `usage` of a response body: everything else is skipped without being built, so a
/// body that reports its usage (the common case) costs one scan and no allocation.
#[derive(Deserialize)]
struct UsageOnly<'a> {
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

/// The `usage` a whole (non-streamed) response body reports, if any.
pub fn body_usage(bytes: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageOnly<'_>>(bytes).ok()?.usage.and_then(parse_usage)
}

impl<'a> Answer<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<Answer<'a>> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.and_then(parse_usage)
    }

    /// Appends the generated text (content, text, tool-call JSON) to `out`.
    pub fn append_completion(&self, out: &mut String) {
        for choice in self.choices.iter().flatten() {
            for message in [&choice.message, &choice.delta].into_iter().flatten() {
                if let Some(content) = &message.content {
                    out.push_str(content);
                }
                if let Some(calls) = message.tool_calls.filter(|c| c.get() != "null") {
                    out.push_str(calls.get());
                }
            }
            if let Some(text) = &choice.text {
                out.push_str(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_of(json: &str) -> Option<Usage> {
        Answer::parse(json.as_bytes()).and_then(|a| a.usage())
    }

    #[test]
    fn body_usage_agrees_with_the_full_parse() {
        for json in [
            r#"{"choices":[{"message":{"content":"Hi \u00e9"}}],"usage":{"prompt_tokens":19,"completion_tokens":72}}"#,
            r#"{"usage":{"total_tokens":7},"data":[{"embedding":[0.1,0.2]}]}"#,
            r#"{"usage":null,"choices":[]}"#,
            r#"{"choices":[{"text":"x"}]}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(body_usage(json.as_bytes()), usage_of(json), "{json}");
        }
    }

    #[test]
    fn usage_shapes() {
        assert_eq!(
            usage_of(r#"{"usage":{"prompt_tokens":19,"completion_tokens":72,"total_tokens":91}}"#),
            Some(Usage { prompt_tokens: 19, completion_tokens: 72, total_tokens: 91 })
        );
        assert_eq!(
            usage_of(r#"{"data":[],"usage":{"prompt_tokens":5,"total_tokens":5}}"#),
            Some(Usage { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 })
        );
        assert_eq!(usage_of(r#"{"usage":null}"#), None);
        assert_eq!(usage_of(r#"{"usage":{"prompt_tokens":-1}}"#), None);
        assert_eq!(usage_of(r#"{"choices":[]}"#), None);
    }

    #[test]
    fn completion_text_from_messages_deltas_and_text() {
        let mut out = String::new();
        Answer::parse(br#"{"choices":[{"message":{"content":"Hello"}},{"delta":{"content":" there"}},{"text":"!"}]}"#)
            .unwrap()
            .append_completion(&mut out);
        assert_eq!(out, "Hello there!");
    }
}
