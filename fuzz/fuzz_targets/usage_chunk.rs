//! The usage-chunk rewriter (`stream_options.include_usage` without backend usage), fed a stream
//! cut at two fuzzer-chosen points: no panic, and what comes out is what went in, plus at most
//! one usage chunk put in just before a `data: [DONE]` line.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::core::meter::usage_chunk::{Rewritten, UsageChunk};
use tollgate::core::meter::{CountSource, Counts};

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
        let part = Bytes::copy_from_slice(part);
        match chunk.rewrite(&part) {
            Rewritten::Same => out.extend_from_slice(&part),
            Rewritten::Changed(b) => out.extend_from_slice(&b),
            Rewritten::Done { bytes, at } => {
                out.extend_from_slice(&chunk.splice(&bytes, at, COUNTS));
                done = true;
            }
        }
    }
    if let Some(rest) = chunk.take_held() {
        out.extend_from_slice(&rest);
    }
    // The oracle: the first line of the stream that starts like the `[DONE]` line.
    let mut first_done = None;
    let mut line = 0;
    while line <= stream.len() {
        let rest = &stream[line..];
        if rest.starts_with(b"data: [DONE]") || rest.starts_with(b"data:[DONE]") {
            first_done = Some(line);
            break;
        }
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => line += i + 1,
            None => break,
        }
    }
    assert_eq!(done, first_done.is_some());
    match first_done {
        None => assert_eq!(out, stream),
        Some(at) => {
            assert!(out.len() > stream.len());
            assert_eq!(&out[..at], &stream[..at]);
            assert!(out.ends_with(&stream[at..]));
            let chunk = &out[at..out.len() - (stream.len() - at)];
            assert!(chunk.starts_with(b"data: {\"choices\":[],") && chunk.ends_with(b"}\n\n"));
        }
    }
});
