//! The request-body token estimator, on every route: any bytes answer Ok or a 400, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::core::estimate::{Tokenizer, estimate};
use tollgate::planes::data::body::BodyFields;
use tollgate::core::api::ApiRoute;

fuzz_target!(|data: &[u8]| {
    for route in [ApiRoute::ChatCompletions, ApiRoute::Completions, ApiRoute::Embeddings, ApiRoute::ImageEmbeddings] {
        for tokenizer in [Tokenizer::Bpe, Tokenizer::Chars] {
            if let Ok(e) = estimate(route, data, tokenizer) {
                let _ = e.completion_reservation(route, 1024);
            }
        }
    }
    let _ = BodyFields::parse(data);
});
