//! Stage "estimate": how many tokens a request will be billed, before it is forwarded.
//!
//! The body is scanned once with serde visitors that count the fields the model bills and skip
//! the rest; no JSON tree is built. The scan also validates the body as a JSON object.
//!
//! What is counted (Llama 3 chat template: `<|begin_of_text|>`, then per message
//! `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`, then the assistant header):
//! - chat: [`PROMPT_OVERHEAD`] per request; per message [`MESSAGE_OVERHEAD`], the role (`tool`
//!   is written `ipython`), the content (a string, or the `text` of each part), the `name` (+1),
//!   and each tool call rendered `{"name":…,"parameters":…}`; `tools` rendered as the template
//!   does (the tool-use preamble, then each definition as JSON indented by four spaces); images
//!   by [`image_tokens`];
//! - completions: the `prompt` (string or strings) + 1;
//! - embeddings: every `input` string (token-id arrays count their length);
//! - image embeddings: [`image_tokens`] per image + its `text`.
//!
//! The completion reservation is `max_tokens` (or `max_completion_tokens`) × `n`, or the
//! deployment's default when the request sets none; embeddings reserve no completion.

mod piece_cache;
mod pretokenize;
mod scan;
mod scan_inputs;
pub mod tokenizer;

use crate::core::api::ApiRoute;
pub use tokenizer::Tokenizer;

/// `<|begin_of_text|>` plus the assistant header that primes the answer.
pub const PROMPT_OVERHEAD: u64 = 5;
/// `<|start_header_id|>`, `<|end_header_id|>`, `\n\n`, `<|eot_id|>` around each message.
pub const MESSAGE_OVERHEAD: u64 = 4;
/// Images: 85 tokens at `detail: "low"`, otherwise 765 (a 1024×1024 image in 512-pixel tiles:
/// 85 + 4 × 170). Reconciliation corrects this from the backend's `usage`.
pub const IMAGE_TOKENS_LOW: u64 = 85;
pub const IMAGE_TOKENS_DEFAULT: u64 = 765;

pub fn image_tokens(detail: Option<&str>) -> u64 {
    if detail == Some("low") { IMAGE_TOKENS_LOW } else { IMAGE_TOKENS_DEFAULT }
}

/// The tool-use preamble Llama 3.1 puts before tool definitions; counted once when `tools` is set.
pub const TOOLS_PREAMBLE: &str = "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n";

/// What the scan of a request body found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub prompt_tokens: u64,
    /// `max_tokens` or `max_completion_tokens`, when set.
    pub max_tokens: Option<u64>,
    /// Number of choices (`n`), 1 when unset.
    pub choices: u64,
    pub stream: bool,
    /// `stream_options.include_usage`: the client wants a usage chunk at the end of the stream.
    pub include_usage: bool,
}

impl Estimate {
    /// Tokens to reserve for the completion: `max_tokens × n`, or `default_max_tokens × n`.
    pub fn completion_reservation(&self, route: ApiRoute, default_max_tokens: u64) -> u64 {
        match route {
            ApiRoute::Embeddings | ApiRoute::ImageEmbeddings | ApiRoute::Info => 0,
            ApiRoute::ChatCompletions | ApiRoute::Completions => {
                self.max_tokens.unwrap_or(default_max_tokens).saturating_mul(self.choices.max(1))
            }
        }
    }
}

/// Scans a request body for its route. Fails (400) when it is not a JSON object or a counted
/// field has the wrong type.
/// Why a request body cannot be estimated: it is not the JSON the route takes (a 400
/// `InvalidJson` on the data plane).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct EstimateError {
    pub reason: String,
}

impl EstimateError {
    /// The kind of error, as the API names it.
    pub fn code(&self) -> &'static str {
        "InvalidJson"
    }
}

pub fn estimate(route: ApiRoute, body: &[u8], tokenizer: Tokenizer) -> Result<Estimate, EstimateError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EstimateError { reason: "the body is empty".into() });
    }
    scan::scan(route, body, tokenizer).map_err(|e| EstimateError { reason: e.to_string() })
}

#[cfg(test)]
mod tests;
