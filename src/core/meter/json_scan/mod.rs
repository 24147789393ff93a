//! An incremental reader of non-streamed JSON answers: fed each frame as it passes (nothing is
//! kept but what is needed), it finds the top-level `usage` at any size and, for answers that
//! report none, keeps only the completion text (`choices[].message.content`, `.delta.content`,
//! `choices[].text`, and the raw `tool_calls`).
//!
//! Written by hand because no crate reads JSON incrementally across frame boundaries while
//! skipping everything but a few paths: serde needs the whole document in one slice (which is
//! what buffering every answer did), and streaming tokenizers yield every token, which is the
//! allocation and copying this avoids. It tracks strings (with escapes), nesting and the current
//! key at each level; it validates no more than it needs, and a document that does not close
//! properly reports no usage (as the serde parse did).

use super::usage::{Usage, parse_usage};
use strings::unescape;

mod strings;

/// Deeper documents are not tracked (serde's default recursion limit is 128).
const MAX_DEPTH: usize = 64;
/// A `usage` object is a few dozen bytes.
const MAX_USAGE: usize = 64 * 1024;
/// Completion text kept for counting when no usage is reported.
const MAX_TEXT: usize = 8 << 20;
/// Keys are compared with the few this reads; longer ones are none of them.
const MAX_KEY: usize = 16;

/// The bytes that change the reader's state outside strings.
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    let bytes = *b"\"{}[],:";
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Choices,
    Message,
    Delta,
    Content,
    Text,
    ToolCalls,
    Usage,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Level {
    object: bool,
    /// The member being read (objects).
    key: Key,
    /// After the `:` of a member (objects).
    in_value: bool,
}

/// What the string being read is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Str {
    Key,
    Text,
    Skip,
}

/// A value copied raw (the usage object, or tool calls) until it ends at `depth`.
#[derive(Debug)]
struct Capture {
    usage: bool,
    depth: usize,
    bytes: Vec<u8>,
}

/// One piece of the completion: a JSON string's raw (escaped) contents, or raw JSON.
#[derive(Debug)]
enum Piece {
    Escaped(Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Debug, Default)]
pub struct JsonAnswerScanner {
    stack: Vec<Level>,
    in_string: bool,
    escape: bool,
    string: Option<Str>,
    key: Vec<u8>,
    /// A value may start here (after `:`, `[` or `,` in an array, or at the root).
    expect_value: bool,
    started: bool,
    capture: Option<Capture>,
    usage: Option<Vec<u8>>,
    /// `usage` appeared twice at the top level: neither is trusted (serde refuses such a body).
    usage_twice: bool,
    pieces: Vec<Piece>,
    text_len: usize,
    /// The root value ended (and nothing but whitespace may follow).
    closed: bool,
    broken: bool,
    /// The usage of an answer that came whole ([`JsonAnswerScanner::feed_whole`]).
    whole: Option<Usage>,
}

impl JsonAnswerScanner {
    pub fn new() -> JsonAnswerScanner {
        JsonAnswerScanner { expect_value: true, ..JsonAnswerScanner::default() }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            if self.broken {
                return;
            }
            if self.in_string && !self.escape && b != b'"' && b != b'\\' {
                // Inside a string only a quote or a backslash matters: take the run up to one
                // at once (most of an answer's bytes are string contents).
                let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
                self.string_run(&bytes[..end]);
                bytes = &bytes[end..];
                continue;
            }
            if !self.in_string && !self.expect_value && !STRUCTURAL[usize::from(b)] && self.in_a_value() {
                // The rest of a number or literal (or whitespace) inside a value: nothing to
                // track until the next structural byte.
                let end = bytes.iter().position(|b| STRUCTURAL[usize::from(*b)]).unwrap_or(bytes.len());
                self.capture_run(&bytes[..end]);
                bytes = &bytes[end..];
                continue;
            }
            self.byte(b);
            bytes = rest;
        }
    }

    /// The whole answer in one piece (its only frame, the common case): parsed at once for its
    /// `usage` (serde skipping the rest: ~2,000 instructions for a short answer against ~11,000
    /// byte by byte). When that finds no usage (or the answer is not valid JSON) it is read
    /// byte by byte as [`feed`](Self::feed) does, for its text. Either way the result is the
    /// same (the byte reader agrees with the whole-body parse: `tests.rs`).
    pub fn feed_whole(&mut self, bytes: &[u8]) {
        if !self.started && self.stack.is_empty() && !self.broken {
            if let Some(usage) = super::usage::body_usage(bytes) {
                self.whole = Some(usage);
                return;
            }
        }
        self.feed(bytes);
    }

    /// Inside an array, or after the `:` of an object member: where scalar bytes may run.
    fn in_a_value(&self) -> bool {
        self.stack.last().is_some_and(|l| !l.object || l.in_value)
    }

    /// The top-level `usage`, when the document closed properly and it holds counts.
    pub fn usage(&self) -> Option<Usage> {
        if self.whole.is_some() {
            return self.whole;
        }
        if !self.closed || self.broken || self.usage_twice {
            return None;
        }
        let raw = self.usage.as_deref()?;
        let raw: &serde_json::value::RawValue = serde_json::from_slice(raw).ok()?;
        parse_usage(raw)
    }

    /// The completion text, in document order (empty when the document is broken).
    pub fn completion(&self) -> String {
        let mut out = String::new();
        if self.broken {
            return out;
        }
        for piece in &self.pieces {
            match piece {
                Piece::Escaped(raw) => {
                    if let Some(text) = unescape(raw) {
                        out.push_str(&text);
                    }
                }
                Piece::Raw(raw) => {
                    if raw.as_slice() != b"null" {
                        out.push_str(&String::from_utf8_lossy(raw));
                    }
                }
            }
        }
        out
    }

    fn byte(&mut self, b: u8) {
        let capturing = self.capture.is_some();
        if capturing {
            self.capture_byte(b);
        }
        self.dispatch(b);
        // A capture opened by this byte (the first byte of the value) starts with it.
        if !capturing && self.capture.is_some() {
            self.capture_byte(b);
        }
    }

    fn capture_byte(&mut self, b: u8) {
        self.capture_run(&[b]);
    }

    /// Bytes of a value being copied (dropped, and the value with them, past its bound).
    fn capture_run(&mut self, run: &[u8]) {
        if let Some(capture) = &mut self.capture {
            capture.bytes.extend_from_slice(run);
            let limit = if capture.usage { MAX_USAGE } else { MAX_TEXT };
            if capture.bytes.len() > limit {
                self.capture = None;
            }
        }
    }

    fn dispatch(&mut self, b: u8) {
        if self.in_string {
            self.string_byte(b);
            return;
        }
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => {}
            b'"' => {
                self.string = Some(self.string_start());
                self.in_string = true;
                self.escape = false;
                if self.string == Some(Str::Text) {
                    self.pieces.push(Piece::Escaped(Vec::new()));
                }
            }
            b'{' | b'[' => {
                self.value_start();
                if self.stack.len() >= MAX_DEPTH {
                    self.broken = true;
                    return;
                }
                self.stack.push(Level { object: b == b'{', key: Key::Other, in_value: false });
                self.expect_value = b == b'[';
            }
            b'}' | b']' => {
                // A scalar value being captured ends at the bracket.
                self.scalar_end();
                match self.stack.pop() {
                    Some(level) if level.object == (b == b'}') => {}
                    _ => {
                        self.broken = true;
                        return;
                    }
                }
                self.expect_value = false;
                self.value_end();
            }
            b':' => match self.stack.last_mut() {
                Some(level) if level.object && !level.in_value => {
                    level.in_value = true;
                    self.expect_value = true;
                }
                _ => self.broken = true,
            },
            b',' => {
                self.scalar_end();
                match self.stack.last_mut() {
                    Some(level) if level.object => {
                        level.in_value = false;
                        level.key = Key::Other;
                    }
                    Some(_) => self.expect_value = true,
                    None => self.broken = true,
                }
            }
            _ => {
                if self.expect_value {
                    self.value_start();
                } else if self.closed || self.stack.last().is_some_and(|l| l.object && !l.in_value) {
                    self.broken = true;
                }
            }
        }
    }

    /// A value starts: decides from the path whether it is kept. Returns whether it is
    /// completion text (for strings).
    fn value_start(&mut self) -> bool {
        if !self.expect_value {
            self.broken = true;
            return false;
        }
        self.expect_value = false;
        if self.closed {
            self.broken = true;
            return false;
        }
        self.started = true;
        let s = &self.stack;
        let in_choice = s.len() >= 3 && s[0].key == Key::Choices && !s[1].object;
        match s.len() {
            1 if s[0].key == Key::Usage && self.capture.is_none() => {
                self.usage_twice |= self.usage.is_some();
                self.capture = Some(Capture { usage: true, depth: 1, bytes: Vec::new() });
                false
            }
            3 if in_choice && s[2].key == Key::Text => true,
            4 if in_choice && matches!(s[2].key, Key::Message | Key::Delta) => match s[3].key {
                Key::Content => true,
                Key::ToolCalls if self.capture.is_none() && self.text_len < MAX_TEXT => {
                    self.capture = Some(Capture { usage: false, depth: 4, bytes: Vec::new() });
                    false
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// A value ended (a container closed, or a string): closes a capture that ends here.
    fn value_end(&mut self) {
        if self.stack.is_empty() {
            self.closed = self.started;
        }
        let depth = self.stack.len();
        if self.capture.as_ref().is_some_and(|c| c.depth == depth) {
            self.finish_capture(None);
        }
    }

    /// A scalar (number, literal) ends at a `,` or a closing bracket.
    fn scalar_end(&mut self) {
        let depth = self.stack.len();
        if self.capture.as_ref().is_some_and(|c| {
            c.depth == depth && !c.bytes.starts_with(b"{") && !c.bytes.starts_with(b"[") && !c.bytes.starts_with(b"\"")
        }) {
            // The delimiter was pushed into the capture: drop it.
            self.finish_capture(Some(1));
        }
    }

    fn finish_capture(&mut self, drop_last: Option<usize>) {
        if let Some(mut capture) = self.capture.take() {
            if let Some(n) = drop_last {
                let keep = capture.bytes.len().saturating_sub(n);
                capture.bytes.truncate(keep);
            }
            if capture.usage {
                self.usage = Some(capture.bytes);
            } else {
                self.text_len += capture.bytes.len();
                self.pieces.push(Piece::Raw(capture.bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests;
