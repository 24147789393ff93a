//! The single-pass body scan: serde seeds that count billed text where it stands and skip
//! everything else (`IgnoredAny`), borrowing strings from the body whenever they hold no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::scan_inputs::{ImageInputsSeed, TextsSeed};
use super::{Estimate, MESSAGE_OVERHEAD, PROMPT_OVERHEAD, TOOLS_PREAMBLE, Tokenizer, image_tokens};
use crate::core::api::ApiRoute;

pub fn scan(route: ApiRoute, body: &[u8], tokenizer: Tokenizer) -> Result<Estimate, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let estimate = BodySeed { route, tokenizer }.deserialize(&mut de)?;
    de.end()?;
    Ok(estimate)
}

/// A string borrowed from the body when it can be, owned when it had escapes.
pub(super) struct Text<'de>(pub(super) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The template writes a `tool` message's role as `ipython`.
fn role_tokens(role: &str, tokenizer: Tokenizer) -> u64 {
    tokenizer.count(if role == "tool" { "ipython" } else { role })
}

/// Tool definitions as the template renders them: the preamble, then each tool as JSON indented
/// by four spaces, separated by blank lines. Rare, so rendering (and allocating) is acceptable.
fn tools_tokens(raw: &RawValue, tokenizer: Tokenizer) -> u64 {
    let Ok(serde_json::Value::Array(tools)) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
        return if raw.get() == "null" { 0 } else { tokenizer.count(raw.get()) };
    };
    if tools.is_empty() {
        return 0;
    }
    let mut rendered = String::from(TOOLS_PREAMBLE);
    for (i, tool) in tools.iter().enumerate() {
        if i > 0 {
            rendered.push_str("\n\n");
        }
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"    "));
        if serde::Serialize::serialize(tool, &mut ser).is_ok() {
            rendered.push_str(&String::from_utf8_lossy(&out));
        }
    }
    rendered.push_str("\n\n");
    tokenizer.count(&rendered)
}

/// An assistant's tool calls as the template renders them: `{"name": ..., "parameters": ...}`.
fn tool_calls_tokens(raw: &RawValue, tokenizer: Tokenizer) -> u64 {
    #[derive(serde::Deserialize)]
    struct Function<'a> {
        #[serde(borrow, default)]
        name: Cow<'a, str>,
        #[serde(borrow, default)]
        arguments: Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        function: Function<'a>,
    }
    match serde_json::from_str::<Option<Vec<Call<'_>>>>(raw.get()) {
        Ok(calls) => calls
            .iter()
            .flatten()
            .map(|c| {
                let arguments = if c.function.arguments.trim().is_empty() { "{}" } else { c.function.arguments.trim() };
                tokenizer.count(&format!("{{\"name\":\"{}\",\"parameters\":{arguments}}}", c.function.name))
            })
            .sum(),
        Err(_) => tokenizer.count(raw.get()),
    }
}

/// Top-level fields the estimate reads.
const COUNTED: [&str; 10] = [
    "messages",
    "tools",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "prompt",
    "input",
    "model",
    "stream_options",
];

/// `stream_options`; other members are the backend's business.
#[derive(serde::Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

struct BodySeed {
    route: ApiRoute,
    tokenizer: Tokenizer,
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Estimate;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Estimate, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Estimate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Estimate, A::Error> {
        use ApiRoute::*;
        let tok = self.tokenizer;
        let mut estimate = Estimate { choices: 1, ..Estimate::default() };
        let mut prompt = 0u64;
        // One bit per COUNTED field: no allocation per request.
        let mut seen = 0u16;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            // A field the bill depends on must appear once: with two `max_tokens` the gateway
            // and the backend could each read a different one.
            if let Some(index) = COUNTED.iter().position(|k| *k == key.0) {
                if seen & (1 << index) != 0 {
                    return Err(A::Error::custom(format!(
                        "duplicate field `{}`: fields the gateway bills by must appear once",
                        COUNTED[index]
                    )));
                }
                seen |= 1 << index;
            }
            match (self.route, key.0.as_ref()) {
                (ChatCompletions, "messages") => prompt += map.next_value_seed(MessagesSeed(tok))?,
                (ChatCompletions, "tools") => prompt += tools_tokens(map.next_value::<&'de RawValue>()?, tok),
                (ChatCompletions | Completions, "max_tokens" | "max_completion_tokens") => {
                    if let Some(max) = map.next_value::<Option<u64>>()? {
                        estimate.max_tokens = Some(max);
                    }
                }
                (ChatCompletions | Completions, "n") => {
                    estimate.choices = map.next_value::<Option<u64>>()?.unwrap_or(1)
                }
                (_, "stream") => estimate.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                (ChatCompletions | Completions, "stream_options") => {
                    estimate.include_usage =
                        map.next_value::<Option<StreamOptions>>()?.and_then(|o| o.include_usage).unwrap_or(false)
                }
                (Completions, "prompt") => prompt += map.next_value_seed(TextsSeed(tok))? + 1,
                (Embeddings, "input") => prompt += map.next_value_seed(TextsSeed(tok))?,
                (ImageEmbeddings, "input") => prompt += map.next_value_seed(ImageInputsSeed(tok))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if self.route == ChatCompletions {
            prompt += PROMPT_OVERHEAD;
        }
        estimate.prompt_tokens = prompt;
        Ok(estimate)
    }
}

/// `messages`: an array of message objects.
struct MessagesSeed(Tokenizer);

impl<'de> DeserializeSeed<'de> for MessagesSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessagesSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0;
        while let Some(tokens) = seq.next_element_seed(MessageSeed(self.0))? {
            total += tokens;
        }
        Ok(total)
    }
}

/// One message: role, content, name, tool calls.
struct MessageSeed(Tokenizer);

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let tok = self.0;
        let mut total = MESSAGE_OVERHEAD;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "role" => total += role_tokens(&map.next_value::<Text<'de>>()?.0, tok),
                "content" => total += map.next_value_seed(ContentSeed(tok))?,
                "name" => total += tok.count(&map.next_value::<Text<'de>>()?.0) + 1,
                "tool_calls" => total += tool_calls_tokens(map.next_value::<&'de RawValue>()?, tok),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(total)
    }
}

/// Message content: a string, an array of parts, or null.
struct ContentSeed(Tokenizer);

impl<'de> DeserializeSeed<'de> for ContentSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContentSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of content parts, or null")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        Ok(self.0.count(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0;
        while let Some(tokens) = seq.next_element_seed(PartSeed(self.0))? {
            total += tokens;
        }
        Ok(total)
    }
}

/// A content part: `{type:"text",text}` or `{type:"image_url",image_url:{url,detail}}`.
struct PartSeed(Tokenizer);

impl<'de> DeserializeSeed<'de> for PartSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PartSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a content part object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut total = 0;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "text" => total += self.0.count(&map.next_value::<Text<'de>>()?.0),
                "image_url" => total += map.next_value_seed(ImageUrlSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(total)
    }
}

/// `image_url`: a URL string or `{url, detail}`.
struct ImageUrlSeed;

impl<'de> DeserializeSeed<'de> for ImageUrlSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ImageUrlSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an image URL or {\"url\", \"detail\"}")
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<u64, E> {
        Ok(image_tokens(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut detail: Option<Text<'de>> = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.0 == "detail" {
                detail = map.next_value::<Option<Text<'de>>>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(image_tokens(detail.as_ref().map(|d| d.0.as_ref())))
    }
}
