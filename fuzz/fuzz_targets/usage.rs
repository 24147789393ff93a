//! The usage extractor over response bodies: no panic; a usage with only a prompt count has no
//! completion tokens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::core::meter::usage::Answer;

fuzz_target!(|data: &[u8]| {
    if let Some(answer) = Answer::parse(data) {
        let _ = answer.usage();
        let mut text = String::new();
        answer.append_completion(&mut text);
    }
});
