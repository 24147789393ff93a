use super::*;
use crate::core::meter::usage::{Answer, body_usage};
use proptest::prelude::*;

fn scan(parts: &[&[u8]]) -> JsonAnswerScanner {
    let mut s = JsonAnswerScanner::new();
    for p in parts {
        s.feed(p);
    }
    s
}

fn old_text(body: &[u8]) -> String {
    let mut out = String::new();
    if let Some(answer) = Answer::parse(body) {
        answer.append_completion(&mut out);
    }
    out
}

#[test]
fn agrees_with_the_whole_body_parse_on_known_shapes() {
    for json in [
        r#"{"choices":[{"message":{"content":"Hi \u00e9 \"q\""}}],"usage":{"prompt_tokens":19,"completion_tokens":72}}"#,
        r#"{"usage":{"total_tokens":7},"data":[{"embedding":[0.1,0.2]}]}"#,
        r#"{"usage":null,"choices":[]}"#,
        r#"{"choices":[{"text":"x"},{"text":"y"}]}"#,
        r#"{"usage":{"prompt_tokens":1}"#,
        r#"[1,2]"#,
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":1}"}}]}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        r#"{"id":"x","choices":[{"message":{"content":"a","tool_calls":null}}]} "#,
        r#"{"a":{"usage":{"total_tokens":5}},"usage":{"total_tokens":6}}"#,
        r#"{"usage":{"total_tokens":6}} trailing"#,
        r#"{"usage":{"total_tokens":6},"usage":{"total_tokens":7}}"#,
        r#"{"us\u0061ge":{"total_tokens":8}}"#,
    ] {
        let bytes = json.as_bytes();
        for cut in 0..=bytes.len() {
            let s = scan(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(s.usage(), body_usage(bytes), "{json} cut at {cut}");
            assert_eq!(s.completion(), old_text(bytes), "{json} cut at {cut}");
        }
        let mut whole = JsonAnswerScanner::new();
        whole.feed_whole(bytes);
        assert_eq!(whole.usage(), body_usage(bytes), "{json} whole");
        if whole.usage().is_none() {
            assert_eq!(whole.completion(), old_text(bytes), "{json} whole: the text of an answer without usage");
        }
    }
}

#[test]
fn a_whole_answer_with_usage_is_not_read_byte_by_byte() {
    let mut s = JsonAnswerScanner::new();
    s.feed_whole(br#"{"choices":[{"message":{"content":"Hello"}}],"usage":{"prompt_tokens":2,"completion_tokens":1}}"#);
    assert_eq!(s.usage(), Some(Usage { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 }));
    assert!(!s.started && s.pieces.is_empty(), "parsed at once, nothing kept");
    // Without usage the text is kept, as fed byte by byte.
    let mut s = JsonAnswerScanner::new();
    s.feed_whole(br#"{"choices":[{"message":{"content":"Hello"}}]}"#);
    assert_eq!((s.usage(), s.completion()), (None, "Hello".to_owned()));
}

#[test]
fn a_huge_answer_keeps_only_its_usage() {
    let mut s = JsonAnswerScanner::new();
    s.feed(br#"{"object":"list","data":["#);
    let item = br#"{"index":0,"object":"embedding","embedding":[0.125,-0.5,0.25,0.75]},"#;
    for _ in 0..200_000 {
        s.feed(item);
    }
    s.feed(br#"{"index":1}],"usage":{"prompt_tokens":12,"total_tokens":12}}"#);
    assert_eq!(s.usage(), Some(Usage { prompt_tokens: 12, completion_tokens: 0, total_tokens: 12 }));
    assert!(s.pieces.is_empty() && s.usage.as_ref().is_some_and(|u| u.len() < 64));
}

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z \"\\\\\n\u{e9}\u{1F600}]{0,12}").unwrap()
}

proptest! {
    /// Any answer, in any key order, with noise around it, cut anywhere: the same usage and
    /// completion text as parsing the whole body.
    #[test]
    fn cut_anywhere_it_reads_what_the_whole_body_says(
        contents in proptest::collection::vec(text(), 0..3),
        texts in proptest::collection::vec(text(), 0..2),
        usage in proptest::option::of((0u64..1000, 0u64..1000)),
        noise in text(),
        usage_first in any::<bool>(),
        cuts in proptest::collection::vec(0usize..400, 0..4),
    ) {
        let mut choices: Vec<serde_json::Value> = contents
            .iter()
            .map(|c| serde_json::json!({"index": 0, "message": {"role": "assistant", "content": c}, "logprobs": null}))
            .collect();
        choices.extend(texts.iter().map(|t| serde_json::json!({"text": t, "extra": {"deep": [[{"text": "no"}]]}})));
        let usage = usage.map(|(p, c)| serde_json::json!({"prompt_tokens": p, "completion_tokens": c}));
        let body = if usage_first {
            serde_json::json!({"usage": usage, "noise": noise, "choices": choices})
        } else {
            serde_json::json!({"choices": choices, "noise": [noise, {"usage": 1}], "usage": usage})
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut s = JsonAnswerScanner::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            s.feed(&bytes[last..cut]);
            last = cut;
        }
        prop_assert_eq!(s.usage(), body_usage(&bytes));
        prop_assert_eq!(s.completion(), old_text(&bytes));
        let mut whole = JsonAnswerScanner::new();
        whole.feed_whole(&bytes);
        prop_assert_eq!(whole.usage(), body_usage(&bytes));
        if whole.usage().is_none() {
            prop_assert_eq!(whole.completion(), old_text(&bytes));
        }
    }
}
