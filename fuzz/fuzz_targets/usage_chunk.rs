//! The usage-chunk rewriter (`stream_options.include_usage` without backend usage), fed a stream
//! cut at two fuzzer-chosen points: no panic, and what comes out is what went in, plus at most
//! one usage chunk put in just before a `data: [DONE]` line.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::meter::usage_chunk::{Rewritten, UsageChunk};
use tollgate::meter::{CountSource, Counts};

const COUNTS: Counts = Counts { prompt: 1, completion: 2, total: 3, source: CountSource::Estimated };

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], stream)) = data.split_first_chunk::<2>() else { return };
    let mut cuts = [usize::from(a) % (stream.len() + 1), usize::from(b) % (stream.len() + 1)];
    cuts.sort_unstable();
    let mut chunk = UsageChunk::new("chat.completion.chunk", "d", "r");
    let mut out = Vec::new();
    let mut done = false;
    for part in [&stream[..cuts[0]], &stream[cuts[0]..cuts[1]], &stream[cuts[1]..]] {
        if done {
            out.extend_from_slice(part);
            continue;
        }
        let (bytes, finished) = chunk.rewrite(&Bytes::copy_from_slice(part), || COUNTS);
        match bytes {
            Rewritten::Same(b) | Rewritten::Changed(b) => out.extend_from_slice(&b),
        }
        done = finished;
    }
    if let Some(rest) = chunk.take_held() {
        out.extend_from_slice(&rest);
    }
    if done {
        let at = out.windows(14).position(|w| w == b"data: {\"choice").expect("the chunk is in");
        let end = at + out[at..].windows(2).position(|w| w == b"\n\n").expect("the chunk ends") + 2;
        let mut without = out[..at].to_vec();
        without.extend_from_slice(&out[end..]);
        assert_eq!(without, stream);
    } else {
        assert_eq!(out, stream);
    }
});
