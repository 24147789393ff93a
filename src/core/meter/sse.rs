//! An incremental scanner of server-sent events: finds `data:` lines across chunk boundaries,
//! keeps the last `usage` seen and the streamed completion text (for counting when no usage
//! comes). The bytes themselves pass through untouched; this only reads them.

use super::usage::{Answer, Usage};

/// Lines longer than this are not scanned (the stream still passes through).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseScanner {
    /// The unfinished last line of the previous chunk.
    partial: Vec<u8>,
    usage: Option<Usage>,
    completion: String,
    done: bool,
    overflowed: bool,
}

impl SseScanner {
    pub fn new() -> SseScanner {
        SseScanner::default()
    }

    /// Reads one chunk of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.partial.is_empty() {
            let Some(end) = chunk.iter().position(|b| *b == b'\n') else {
                self.keep_partial(chunk);
                return;
            };
            self.keep_partial(&chunk[..end]);
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
            self.partial = line;
            self.partial.clear();
            chunk = &chunk[end + 1..];
        }
        while let Some(end) = chunk.iter().position(|b| *b == b'\n') {
            self.line(&chunk[..end]);
            chunk = &chunk[end + 1..];
        }
        if !chunk.is_empty() {
            self.keep_partial(chunk);
        }
    }

    fn keep_partial(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.overflowed = true;
            self.partial.clear();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn line(&mut self, line: &[u8]) {
        if std::mem::take(&mut self.overflowed) {
            return; // the rest of an over-long line
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if let Some(answer) = Answer::parse(data) {
            if let Some(usage) = answer.usage() {
                self.usage = Some(usage);
            }
            answer.append_completion(&mut self.completion);
        }
    }

    /// The last `usage` the stream carried.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The completion text streamed so far.
    pub fn completion(&self) -> &str {
        &self.completion
    }

    /// The completion text streamed so far, taken out (the scanner keeps none).
    pub fn take_completion(&mut self) -> String {
        std::mem::take(&mut self.completion)
    }

    /// Whether `data: [DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\r\n\r\n\
        : a comment\n\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn whole_stream() {
        let mut s = SseScanner::new();
        s.feed(STREAM.as_bytes());
        assert_eq!(s.usage(), Some(Usage { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 }));
        assert_eq!(s.completion(), "Hello world");
        assert!(s.done());
    }

    proptest! {
        /// However the stream is cut into chunks, the scan sees the same thing.
        #[test]
        fn chunking_does_not_matter(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..20)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let bytes = STREAM.as_bytes();
            let mut s = SseScanner::new();
            let mut start = 0;
            for cut in cuts {
                s.feed(&bytes[start..cut]);
                start = cut;
            }
            s.feed(&bytes[start..]);
            prop_assert_eq!(s.usage().map(|u| u.total_tokens), Some(11));
            prop_assert_eq!(s.completion(), "Hello world");
            prop_assert!(s.done());
        }

        /// Arbitrary bytes never panic the scanner.
        #[test]
        fn any_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut s = SseScanner::new();
            for chunk in &chunks {
                s.feed(chunk);
            }
        }
    }

    #[test]
    fn over_long_lines_are_skipped_not_buffered() {
        let mut s = SseScanner::new();
        let huge = vec![b'x'; MAX_LINE + 10];
        s.feed(b"data: ");
        s.feed(&huge);
        s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert!(s.partial.capacity() <= MAX_LINE + 64);
        assert_eq!(s.usage().map(|u| u.total_tokens), Some(2));
    }
}
