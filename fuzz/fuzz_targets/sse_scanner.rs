//! The SSE scanner, fed the same bytes whole and cut at a fuzzer-chosen point: no panic, and the
//! cut never changes what it finds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::core::meter::sse::SseScanner;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let mut whole = SseScanner::new();
    whole.feed(stream);
    let at = usize::from(cut) % (stream.len() + 1);
    let mut split = SseScanner::new();
    split.feed(&stream[..at]);
    split.feed(&stream[at..]);
    assert_eq!(whole.usage(), split.usage());
    assert_eq!(whole.completion(), split.completion());
    assert_eq!(whole.done(), split.done());
});
