//! The incremental answer reader, fed a body cut at a fuzzer-chosen point: no panic, and for any
//! well-formed JSON it reads the same usage as parsing the whole body at once, and the same
//! completion text (in document order, so compared as the same characters). It validates less
//! than serde: for malformed documents only "no panic" is checked.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::core::meter::json_scan::JsonAnswerScanner;
use tollgate::core::meter::usage::{Answer, body_usage};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let at = usize::from(cut) % (body.len() + 1);
    let mut scanner = JsonAnswerScanner::new();
    scanner.feed(&body[..at]);
    scanner.feed(&body[at..]);
    // Answers are objects (serde would also read a struct from an array: not an answer).
    if !serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_object()) {
        let _ = (scanner.usage(), scanner.completion());
        return;
    }
    assert_eq!(scanner.usage(), body_usage(body));
    let mut whole = String::new();
    if let Some(answer) = Answer::parse(body) {
        answer.append_completion(&mut whole);
        let mut a: Vec<char> = scanner.completion().chars().collect();
        let mut b: Vec<char> = whole.chars().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }
});
