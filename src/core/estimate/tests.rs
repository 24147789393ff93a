use super::*;

fn chat(body: &str) -> Estimate {
    estimate(ApiRoute::ChatCompletions, body.as_bytes(), Tokenizer::Bpe).unwrap()
}

#[test]
fn hi_is_one_token_of_content_and_about_ten_billed() {
    // "Hi" (1) + role "user" (1) + 4 around the message + 5 for the prompt.
    let e = chat(r#"{"messages":[{"role":"user","content":"Hi"}]}"#);
    assert_eq!(e.prompt_tokens, 1 + 1 + MESSAGE_OVERHEAD + PROMPT_OVERHEAD);
    assert_eq!(e.max_tokens, None);
    assert_eq!(e.choices, 1);
    assert!(!e.stream);
}

#[test]
fn parts_names_tool_calls_and_tools_are_counted() {
    let plain = chat(r#"{"messages":[{"role":"user","content":"Describe this."}]}"#).prompt_tokens;
    let parts = chat(
        r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Describe this."},{"type":"image_url","image_url":{"url":"data:x","detail":"low"}}]}]}"#,
    );
    assert_eq!(parts.prompt_tokens, plain + IMAGE_TOKENS_LOW);
    let high = chat(r#"{"messages":[{"role":"user","content":[{"image_url":{"url":"u"},"type":"image_url"}]}]}"#);
    assert_eq!(high.prompt_tokens, 1 + MESSAGE_OVERHEAD + PROMPT_OVERHEAD + IMAGE_TOKENS_DEFAULT);
    let named = chat(r#"{"messages":[{"role":"user","name":"alice","content":"Describe this."}]}"#);
    assert_eq!(named.prompt_tokens, plain + Tokenizer::Bpe.count("alice") + 1);
    let calls =
        r#"[{"id":"1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]"#;
    let with_calls = chat(&format!(r#"{{"messages":[{{"role":"assistant","content":null,"tool_calls":{calls}}}]}}"#));
    let rendered = r#"{"name":"get_weather","parameters":{"city":"Paris"}}"#;
    assert_eq!(
        with_calls.prompt_tokens,
        Tokenizer::Bpe.count("assistant") + MESSAGE_OVERHEAD + PROMPT_OVERHEAD + Tokenizer::Bpe.count(rendered)
    );
    let tools = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#;
    let with_tools = chat(&format!(r#"{{"tools":{tools},"messages":[{{"role":"user","content":"Describe this."}}]}}"#));
    let pretty = "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"parameters\": {\n            \"type\": \"object\"\n        }\n    }\n}";
    assert_eq!(with_tools.prompt_tokens, plain + Tokenizer::Bpe.count(&format!("{TOOLS_PREAMBLE}{pretty}\n\n")));
    let tool_role = chat(r#"{"messages":[{"role":"tool","tool_call_id":"1","content":"Describe this."}]}"#);
    assert_eq!(tool_role.prompt_tokens, plain - 1 + Tokenizer::Bpe.count("ipython"));
}

#[test]
fn escaped_strings_count_their_decoded_text() {
    let a = chat(r#"{"messages":[{"role":"user","content":"line one\nline two \u00e9"}]}"#);
    let b = Tokenizer::Bpe.count("line one\nline two é") + 1 + MESSAGE_OVERHEAD + PROMPT_OVERHEAD;
    assert_eq!(a.prompt_tokens, b);
}

#[test]
fn reservation_fields() {
    let e = chat(r#"{"messages":[],"max_tokens":100,"n":3,"stream":true}"#);
    assert_eq!((e.max_tokens, e.choices, e.stream), (Some(100), 3, true));
    assert_eq!(e.completion_reservation(ApiRoute::ChatCompletions, 512), 300);
    let e = chat(r#"{"messages":[],"max_completion_tokens":7,"max_tokens":null}"#);
    assert_eq!(e.completion_reservation(ApiRoute::ChatCompletions, 512), 7);
    let e = chat(r#"{"messages":[]}"#);
    assert_eq!(e.completion_reservation(ApiRoute::ChatCompletions, 512), 512);
    assert_eq!(e.completion_reservation(ApiRoute::Embeddings, 512), 0);
}

#[test]
fn other_routes() {
    let e = estimate(ApiRoute::Embeddings, br#"{"input":["Hello world!","Hello world!"]}"#, Tokenizer::Bpe).unwrap();
    assert_eq!(e.prompt_tokens, 6);
    let e = estimate(ApiRoute::Embeddings, br#"{"input":[[1,2,3],[4]]}"#, Tokenizer::Bpe).unwrap();
    assert_eq!(e.prompt_tokens, 4);
    let e = estimate(ApiRoute::Completions, br#"{"prompt":"Hello world!","max_tokens":5}"#, Tokenizer::Bpe).unwrap();
    assert_eq!((e.prompt_tokens, e.max_tokens), (4, Some(5)));
    let e =
        estimate(ApiRoute::ImageEmbeddings, br#"{"input":[{"image":"data:","text":"Hello world!"}]}"#, Tokenizer::Bpe)
            .unwrap();
    assert_eq!(e.prompt_tokens, IMAGE_TOKENS_DEFAULT + 3);
}

#[test]
fn bad_bodies_are_rejected_with_a_reason() {
    for (route, body) in [
        (ApiRoute::ChatCompletions, &b""[..]),
        (ApiRoute::ChatCompletions, b"[]"),
        (ApiRoute::ChatCompletions, b"{\"messages\":[1]}"),
        (ApiRoute::ChatCompletions, b"{\"messages\":[]} trailing"),
        (ApiRoute::ChatCompletions, b"{\"max_tokens\":-1}"),
        (ApiRoute::ChatCompletions, b"{\"messages\":[{\"content\":5}]}"),
        (ApiRoute::Embeddings, b"{\"input\":[-1]}"),
        (ApiRoute::ImageEmbeddings, b"{\"input\":[{\"text\":\"x\"}]}"),
        (ApiRoute::ChatCompletions, b"{\"messages\":[],\"max_tokens\":1,\"max_tokens\":900000}"),
        (ApiRoute::ChatCompletions, b"{\"max_tokens\":18446744073709551616}"),
        (ApiRoute::ChatCompletions, b"{\"max_tokens\":1e400}"),
    ] {
        let err = estimate(route, body, Tokenizer::Bpe).unwrap_err();
        assert_eq!(err.code(), "InvalidJson", "{body:?}");
    }
    let deep = format!("{{\"messages\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(estimate(ApiRoute::ChatCompletions, deep.as_bytes(), Tokenizer::Bpe).is_err());
}

#[test]
fn the_chars_heuristic_is_selectable() {
    let e = estimate(ApiRoute::Embeddings, br#"{"input":"abcdefgh"}"#, Tokenizer::Chars).unwrap();
    assert_eq!(e.prompt_tokens, 2);
}

proptest::proptest! {
    /// Any bytes: the scan answers (Ok or a 400), never panics.
    #[test]
    fn never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        for route in [ApiRoute::ChatCompletions, ApiRoute::Completions, ApiRoute::Embeddings, ApiRoute::ImageEmbeddings] {
            let _ = estimate(route, &body, Tokenizer::Bpe);
        }
    }

    /// Adding a message never lowers the estimate.
    #[test]
    fn monotonic_in_messages(texts in proptest::collection::vec(".{0,40}", 1..6)) {
        let messages: Vec<serde_json::Value> = texts.iter().map(|t| serde_json::json!({"role":"user","content":t})).collect();
        let mut last = 0;
        for n in 1..=messages.len() {
            let body = serde_json::json!({"messages": &messages[..n]}).to_string();
            let e = estimate(ApiRoute::ChatCompletions, body.as_bytes(), Tokenizer::Bpe).unwrap();
            proptest::prop_assert!(e.prompt_tokens > last);
            last = e.prompt_tokens;
        }
    }
}

/// What `Tokenizer::Bpe` must count: bpe-openai's own cl100k count, no cache, no hand split.
fn reference_count(text: &str) -> u64 {
    bpe_openai::cl100k_base().count(text) as u64
}

#[test]
fn cached_piece_counts_equal_the_encoders_on_prose_and_code_counted_again_and_again() {
    let texts = [
        "You are a helpful assistant. Say hello in one short sentence.",
        "fn main() { println!(\"{}\", 40 + 2); } // the answer's   spacing\n\n\tindent",
        "I'm sure they'll say it's fine; we've 1234567 reasons, don't we?",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa aaaaaaaaaaaaaaaaaaaaaaa a",
    ];
    for round in 0..3 {
        for text in texts {
            assert_eq!(Tokenizer::Bpe.count(text), reference_count(text), "round {round}: {text:?}");
        }
    }
}

proptest::proptest! {
    /// Through the per-thread piece cache (warm after the first cases, with slots replaced as
    /// pieces collide), every ASCII text counts as the encoder counts it.
    #[test]
    fn ascii_counts_equal_the_encoders(text in "[ -~\n\t]{0,200}", words in proptest::collection::vec("(the|a|you| are|helpful|[A-Za-z]{1,12}|[0-9]{1,5}|'s| +|\n)", 0..40)) {
        proptest::prop_assert_eq!(Tokenizer::Bpe.count(&text), reference_count(&text));
        let joined = words.concat();
        proptest::prop_assert_eq!(Tokenizer::Bpe.count(&joined), reference_count(&joined));
    }
}
