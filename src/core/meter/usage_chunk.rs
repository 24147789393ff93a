//! `stream_options: {"include_usage": true}` when the backend sends no usage: the client asked for
//! a usage chunk, so the gateway writes one with its own counts just before `data: [DONE]`.
//!
//! The chunk is the OpenAI shape (`choices: []`, `usage`) plus `"x_tollgate": {"usage":
//! "estimated"}`, so a reader can tell the gateway counted it (prompt from the estimate,
//! completion from the streamed text). Frames pass through untouched until the `[DONE]` line is
//! found; only a frame ending in what may be the start of that line keeps those few bytes back
//! until the next frame shows whether it is.

use bytes::{Bytes, BytesMut};

use super::Counts;

const DONE_LINES: [&[u8]; 2] = [b"data: [DONE]", b"data:[DONE]"];

/// Looks for the `[DONE]` line in a stream and puts the usage chunk before it.
#[derive(Debug)]
pub struct UsageChunk {
    /// Bytes at the end of the last frame that may begin the `[DONE]` line.
    held: BytesMut,
    /// Whether the next frame starts a line (a frame may be cut in the middle of one).
    line_start: bool,
    /// `chat.completion.chunk` or `text_completion`.
    object: &'static str,
    /// Echoed as the chunk's `model`.
    model: String,
    id: String,
}

/// What to send in place of a frame.
pub enum Rewritten {
    /// The frame as it came (nothing held, nothing found).
    Same,
    /// Different bytes: a held-back prefix joined, or bytes held back.
    Changed(Bytes),
    /// These bytes (the frame, joined to what was held) hold the `[DONE]` line at `at`: the chunk
    /// goes there ([`UsageChunk::splice`]), and the job is done.
    Done { bytes: Bytes, at: usize },
}

impl UsageChunk {
    pub fn new(object: &'static str, model: &str, request_id: &str) -> UsageChunk {
        UsageChunk {
            held: BytesMut::new(),
            line_start: true,
            object,
            model: model.to_owned(),
            id: format!("tollgate-usage-{request_id}"),
        }
    }

    /// What to send for `frame`: where the `[DONE]` line is, when this frame has it.
    pub fn rewrite(&mut self, frame: &Bytes) -> Rewritten {
        // Held bytes always begin a line.
        let starts_line = self.line_start || !self.held.is_empty();
        let joined: Bytes = if self.held.is_empty() {
            frame.clone()
        } else {
            self.held.extend_from_slice(frame);
            self.held.split().freeze()
        };
        if let Some(at) = done_line(&joined, starts_line) {
            return Rewritten::Done { bytes: joined, at };
        }
        let last_line = match joined.iter().rposition(|b| *b == b'\n') {
            Some(i) => Some(i + 1),
            None => starts_line.then_some(0),
        };
        let changed = joined.len() != frame.len();
        if let Some(line) = last_line {
            let tail = &joined[line..];
            if !tail.is_empty() && DONE_LINES.iter().any(|d| d.starts_with(tail)) {
                self.held.extend_from_slice(tail);
                return Rewritten::Changed(joined.slice(..line));
            }
        }
        self.line_start = match joined.last() {
            Some(b) => *b == b'\n',
            None => starts_line,
        };
        if changed { Rewritten::Changed(joined) } else { Rewritten::Same }
    }

    /// `bytes` with the usage chunk for `counts` put in at `at` (from [`Rewritten::Done`]).
    pub fn splice(&self, bytes: &Bytes, at: usize, counts: Counts) -> Bytes {
        let chunk = self.chunk(counts);
        let mut out = BytesMut::with_capacity(bytes.len() + chunk.len());
        out.extend_from_slice(&bytes[..at]);
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&bytes[at..]);
        out.freeze()
    }

    /// Bytes still held back when the stream ends.
    pub fn take_held(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }

    fn chunk(&self, counts: Counts) -> Vec<u8> {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let chunk = serde_json::json!({
            "id": self.id,
            "object": self.object,
            "created": created,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": counts.prompt,
                "completion_tokens": counts.completion,
                "total_tokens": counts.total,
            },
            "x_tollgate": {"usage": "estimated"},
        });
        format!("data: {chunk}\n\n").into_bytes()
    }
}

/// Where a `[DONE]` line starts: after a newline, or at the start of the bytes when they begin
/// a line (`starts_line`).
fn done_line(bytes: &[u8], starts_line: bool) -> Option<usize> {
    let mut start = if starts_line { 0 } else { bytes.iter().position(|b| *b == b'\n')? + 1 };
    loop {
        let line = &bytes[start..];
        if DONE_LINES.iter().any(|d| line.starts_with(d)) {
            return Some(start);
        }
        start += line.iter().position(|b| *b == b'\n')? + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::meter::CountSource;

    const COUNTS: Counts = Counts { prompt: 7, completion: 3, total: 10, source: CountSource::Estimated };

    fn run(frames: &[&str]) -> String {
        let mut chunk = UsageChunk::new("chat.completion.chunk", "dep", "rid");
        let mut out = Vec::new();
        for frame in frames {
            let frame = Bytes::copy_from_slice(frame.as_bytes());
            match chunk.rewrite(&frame) {
                Rewritten::Same => out.extend_from_slice(&frame),
                Rewritten::Changed(b) => out.extend_from_slice(&b),
                Rewritten::Done { bytes, at } => out.extend_from_slice(&chunk.splice(&bytes, at, COUNTS)),
            }
        }
        if let Some(rest) = chunk.take_held() {
            out.extend_from_slice(&rest);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_chunk_goes_just_before_done_however_the_stream_is_cut() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let expected_prefix = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {";
        for cut in 0..=stream.len() {
            let out = run(&[&stream[..cut], &stream[cut..]]);
            assert!(out.starts_with(expected_prefix), "cut at {cut}: {out}");
            assert!(out.ends_with("\n\ndata: [DONE]\n\n"), "cut at {cut}: {out}");
            let usage_line = out.lines().find(|l| l.contains("\"usage\"")).unwrap();
            let json: serde_json::Value = serde_json::from_str(usage_line.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(json["usage"]["total_tokens"], 10);
            assert_eq!(json["x_tollgate"]["usage"], "estimated");
            assert_eq!(json["choices"], serde_json::json!([]));
        }
    }

    proptest::proptest! {
        /// Cut anywhere into any number of frames, the stream comes out as it went in, with the
        /// chunk once, just before `[DONE]`.
        #[test]
        fn any_cuts_change_nothing_but_the_chunk(
            events in proptest::collection::vec("[a-zD\\[\\]{}: ]{0,12}", 0..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let mut stream: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            let before_done = stream.len();
            stream.push_str("data: [DONE]\n\n");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut frames = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                frames.push(&stream[last..cut]);
                last = cut;
            }
            let out = run(&frames);
            // The chunk's keys are sorted: it starts with `choices` (events here hold no quotes).
            let at = out.find("data: {\"choices\":[],");
            proptest::prop_assert!(at.is_some(), "no chunk in {}", out);
            let at = at.unwrap_or_default();
            let end = at + out[at..].find("\n\n").unwrap() + 2;
            // An event text like "[DONE]" itself ends the stream earlier: the chunk goes before it.
            let first_done = stream.find("data: [DONE]").unwrap();
            proptest::prop_assert_eq!(at, first_done.min(before_done));
            proptest::prop_assert_eq!(format!("{}{}", &out[..at], &out[end..]), stream);
        }
    }

    #[test]
    fn a_done_in_the_middle_of_a_line_is_not_the_end_however_it_is_cut() {
        let stream = "data: xdata: [DONE]\n\n";
        for cut in 0..=stream.len() {
            assert_eq!(run(&[&stream[..cut], &stream[cut..]]), stream, "cut at {cut}");
        }
    }

    #[test]
    fn data_lines_that_only_look_like_done_pass_through() {
        let stream = "data: [DONT]\n\ndata: {}\n\n";
        assert_eq!(run(&["data: [DO", "NT]\n\ndata: {}\n\n"]), stream);
        assert_eq!(run(&["data", ": {}\n\n"]), "data: {}\n\n");
    }
}
