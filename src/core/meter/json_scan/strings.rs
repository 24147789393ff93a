//! The answer reader inside JSON strings: escapes, member names, and the completion text it
//! keeps.

use super::*;

pub(super) fn key_of(bytes: &[u8]) -> Key {
    match bytes {
        b"choices" => Key::Choices,
        b"message" => Key::Message,
        b"delta" => Key::Delta,
        b"content" => Key::Content,
        b"text" => Key::Text,
        b"tool_calls" => Key::ToolCalls,
        b"usage" => Key::Usage,
        _ => Key::Other,
    }
}

/// A JSON string's raw contents (between the quotes, escapes and all), decoded.
pub(super) fn unescape(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

impl JsonAnswerScanner {
    /// Plain string contents (no quote, no backslash).
    pub(super) fn string_run(&mut self, run: &[u8]) {
        self.capture_run(run);
        match self.string {
            Some(Str::Key) => {
                let room = (MAX_KEY + 1).saturating_sub(self.key.len());
                self.key.extend_from_slice(&run[..run.len().min(room)]);
            }
            Some(Str::Text) if self.text_len < MAX_TEXT => {
                let take = run.len().min(MAX_TEXT - self.text_len);
                self.text_len += take;
                if let Some(Piece::Escaped(raw)) = self.pieces.last_mut() {
                    raw.extend_from_slice(&run[..take]);
                }
            }
            _ => {}
        }
    }

    pub(super) fn string_byte(&mut self, b: u8) {
        let ended = if self.escape {
            self.escape = false;
            false
        } else if b == b'\\' {
            self.escape = true;
            false
        } else {
            b == b'"'
        };
        if ended {
            self.in_string = false;
            match self.string.take() {
                Some(Str::Key) => {
                    let key = if self.key.len() > MAX_KEY {
                        Key::Other
                    } else if self.key.contains(&b'\\') {
                        // An escaped name (`"us\u0061ge"`) is the name it decodes to.
                        unescape(&self.key).map_or(Key::Other, |k| key_of(k.as_bytes()))
                    } else {
                        key_of(&self.key)
                    };
                    self.key.clear();
                    if let Some(level) = self.stack.last_mut() {
                        level.key = key;
                    }
                }
                Some(_) => self.value_end(),
                None => {}
            }
            return;
        }
        match self.string {
            Some(Str::Key) if self.key.len() <= MAX_KEY => self.key.push(b),
            Some(Str::Text) if self.text_len < MAX_TEXT => {
                self.text_len += 1;
                if let Some(Piece::Escaped(raw)) = self.pieces.last_mut() {
                    raw.push(b);
                }
            }
            _ => {}
        }
    }

    /// What a string starting now is: a member name, completion text, or neither.
    pub(super) fn string_start(&mut self) -> Str {
        if self.stack.last().is_some_and(|l| l.object && !l.in_value) {
            return Str::Key;
        }
        let text = self.value_start();
        if text { Str::Text } else { Str::Skip }
    }
}
