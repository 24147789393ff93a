//! Reading what a backend answered: the SSE and JSON scanners, `usage`, the usage chunk, and
//! the token counts a request is billed.

pub mod json_scan;
pub mod sse;
pub mod usage;
pub mod usage_chunk;

use usage::Usage;

/// Where a record's token counts came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountSource {
    /// The backend's `usage`.
    Reported,
    /// tollgate's own count (prompt estimate, completion counted from the streamed text).
    Estimated,
    /// Nothing was billed (rejected, or failed before any output).
    None,
}

impl CountSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CountSource::Reported => "reported",
            CountSource::Estimated => "estimated",
            CountSource::None => "none",
        }
    }
}

/// Billed token counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
    pub source: CountSource,
}

impl Counts {
    pub const NONE: Counts = Counts { prompt: 0, completion: 0, total: 0, source: CountSource::None };

    pub fn reported(usage: Usage) -> Counts {
        Counts {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            total: usage.total_tokens,
            source: CountSource::Reported,
        }
    }

    pub fn estimated(prompt: u64, completion: u64) -> Counts {
        Counts { prompt, completion, total: prompt.saturating_add(completion), source: CountSource::Estimated }
    }
}
