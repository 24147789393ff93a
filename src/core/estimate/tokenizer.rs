//! Token counters the estimator can use, selectable per deployment.

use std::sync::LazyLock;

/// How a deployment's texts are counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// cl100k_base byte-pair encoding (its data ships inside the `bpe-openai` crate). Llama 3's
    /// tokenizer shares cl100k's pre-tokenizer and extends its 100k vocabulary to 128k, so counts
    /// are close for English and code and somewhat high for other languages (see README).
    #[default]
    Bpe,
    /// A fast heuristic with no tables: ASCII characters / 4, plus 2/3 of a token per other
    /// character.
    Chars,
}

static CL100K: LazyLock<&'static bpe_openai::Tokenizer> = LazyLock::new(bpe_openai::cl100k_base);

impl Tokenizer {
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        match self {
            // ASCII is split by hand, exactly as the regex would ([`super::pretokenize`]).
            Tokenizer::Bpe if text.is_ascii() => {
                let mut total = 0;
                super::pretokenize::split_ascii(text.as_bytes(), |piece| {
                    total += super::piece_cache::count(piece, |piece| CL100K.bpe.count(piece));
                });
                total as u64
            }
            Tokenizer::Bpe => CL100K.count(text) as u64,
            Tokenizer::Chars => {
                let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
                let other = text.chars().filter(|c| !c.is_ascii()).count() as u64;
                (ascii * 3 + other * 8).div_ceil(12)
            }
        }
    }

    /// The longest text (in bytes) worth counting on a runtime worker: under ~100 µs of counting
    /// (BPE runs at ~60 MiB/s, the chars heuristic at ~700 MiB/s; `BENCHMARKS.md`). Longer texts
    /// are counted on the blocking pool.
    pub fn inline_limit(self) -> usize {
        match self {
            Tokenizer::Bpe => 4 * 1024,
            Tokenizer::Chars => 64 * 1024,
        }
    }

    /// Loads the tokenizer's tables now, so the first request does not pay for it.
    pub fn warm_up(self) {
        let _ = self.count("warm up");
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tokenizer::Bpe => "bpe",
            Tokenizer::Chars => "chars",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpe_counts_like_cl100k() {
        assert_eq!(Tokenizer::Bpe.count("Hello world!"), 3);
        assert_eq!(Tokenizer::Bpe.count(""), 0);
        assert_eq!(Tokenizer::Bpe.count("user"), 1);
    }

    #[test]
    fn chars_heuristic() {
        assert_eq!(Tokenizer::Chars.count("abcd"), 1);
        assert_eq!(Tokenizer::Chars.count("abcde"), 2);
        assert_eq!(Tokenizer::Chars.count("日本語"), 2);
    }
}
