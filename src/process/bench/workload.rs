//! What `tollgate bench` sends: a built-in mix, a body from a file, synthetic prompts of chosen
//! token lengths, or the bodies of a JSONL file (with optional timestamps, for trace replay).
//!
//! Every body is prepared before the run starts (a pool cycled by request number), so the run
//! itself only clones `Bytes`. Whether a request streams is read from its parsed body.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::{Value, json};

use crate::core::estimate::Tokenizer;

/// Built-in request mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A one-line chat question, 16 completion tokens.
    ShortChat,
    /// A multi-turn chat of about 4 KB, 128 completion tokens.
    LongChat,
    /// Two short texts to embed.
    Embeddings,
    /// The short chat, streamed.
    StreamChat,
}

/// A distribution of token counts: `128`, `uniform:64-256` or `normal:128,32`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    Fixed(u64),
    Uniform(u64, u64),
    Normal { mean: f64, sd: f64 },
}

impl Dist {
    pub fn parse(text: &str) -> Result<Dist, String> {
        let bad = || format!("'{text}': write a token count like 128, uniform:64-256 or normal:128,32");
        let number = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        let dist = if let Some(range) = text.strip_prefix("uniform:") {
            let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
            let (lo, hi) = (number(lo)?, number(hi)?);
            if lo > hi {
                return Err(format!("'{text}': the low end is above the high end"));
            }
            Dist::Uniform(lo, hi)
        } else if let Some(shape) = text.strip_prefix("normal:") {
            let (mean, sd) = shape.split_once(',').ok_or_else(bad)?;
            let (mean, sd) = (number(mean)? as f64, number(sd)? as f64);
            Dist::Normal { mean, sd }
        } else {
            Dist::Fixed(number(text)?)
        };
        Ok(dist)
    }

    /// One draw, at least 1.
    fn sample(self, rng: &mut StdRng) -> u64 {
        match self {
            Dist::Fixed(n) => n,
            Dist::Uniform(lo, hi) => rng.random_range(lo..=hi),
            Dist::Normal { mean, sd } => {
                Normal::new(mean, sd).map_or(mean, |normal| normal.sample(rng)).round().max(1.0) as u64
            }
        }
        .max(1)
    }
}

/// The prompts of a run.
#[derive(Clone, Debug)]
pub enum Prompts {
    Mix(Mix),
    /// One body, sent as is.
    Body(Bytes),
    /// Lines of a JSONL file.
    Replay(Vec<ReplayLine>),
}

/// One line of a replay file: the body, and when to send it (seconds from the start).
#[derive(Clone, Debug)]
pub struct ReplayLine {
    pub body: Bytes,
    pub at: Option<f64>,
}

/// Changes to a mix's chat bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// A synthetic user prompt of this many tokens (cl100k, as tollgate counts) in place of the
    /// mix's messages.
    pub prompt_tokens: Option<Dist>,
    pub max_tokens: Option<Dist>,
    /// The share of requests streamed (0 to 1), in place of the mix's.
    pub stream_share: Option<f64>,
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The path after the root URL.
    pub path: String,
    /// The root URL and the path, parsed once (set by the run, which knows the root).
    pub uri: http::Uri,
    pub body: Bytes,
    pub stream: bool,
    /// The replayed trace's timestamp.
    pub at: Option<f64>,
}

/// How many distinct bodies a shaped mix prepares (cycled by request number).
const POOL: usize = 1000;

/// Parses a replay file: one JSON object per line, either a request body or
/// `{"timestamp": seconds, "body": {...}}`. Blank lines are skipped.
pub fn parse_replay(text: &str) -> Result<Vec<ReplayLine>, String> {
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |e: String| format!("--replay line {}: {e}", i + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| at_line(format!("not JSON: {e}")))?;
        let Value::Object(object) = &value else {
            return Err(at_line("expected a JSON object (a request body)".into()));
        };
        let (body, at) = match object.get("body") {
            Some(body @ Value::Object(_)) => {
                let at =
                    match object.get("timestamp") {
                        None => None,
                        Some(t) => Some(t.as_f64().filter(|t| t.is_finite() && *t >= 0.0).ok_or_else(|| {
                            at_line("\"timestamp\" must be seconds from the start, 0 or more".into())
                        })?),
                    };
                (body.to_string(), at)
            }
            _ => (line.to_owned(), None),
        };
        lines.push(ReplayLine { body: Bytes::from(body), at });
    }
    if lines.is_empty() {
        return Err("--replay: the file has no request bodies".into());
    }
    let timed = lines.iter().filter(|l| l.at.is_some()).count();
    if timed != 0 && timed != lines.len() {
        return Err(format!("--replay: {timed} of {} lines have a timestamp: give all or none", lines.len()));
    }
    Ok(lines)
}

/// Every request body of the run, cycled by request number.
pub fn prepare(prompts: &Prompts, shape: Shape, deployment: Option<&str>, seed: u64) -> Result<Vec<Prepared>, String> {
    let path = |route: &str| match deployment {
        Some(d) => format!("/openai/deployments/{d}{route}"),
        None => route.to_owned(),
    };
    let prepared = |body: Bytes| -> Result<Prepared, String> {
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("a request body is not JSON: {e}"))?;
        let route = if value.get("input").is_some() && value.get("messages").is_none() {
            "/embeddings"
        } else {
            "/chat/completions"
        };
        let stream = value.get("stream").and_then(Value::as_bool).unwrap_or(false);
        Ok(Prepared { path: path(route), uri: http::Uri::default(), body, stream, at: None })
    };
    let shaped = shape != Shape::default();
    match prompts {
        Prompts::Body(body) if !shaped => Ok(vec![prepared(body.clone())?]),
        Prompts::Replay(lines) if !shaped => {
            lines.iter().map(|line| Ok(Prepared { at: line.at, ..prepared(line.body.clone())? })).collect()
        }
        Prompts::Body(_) | Prompts::Replay(_) => {
            Err("--prompt-tokens, --max-tokens and --stream-share shape a --mix, not --body or --replay".into())
        }
        Prompts::Mix(mix) if !shaped => Ok(vec![prepared(Bytes::from(base(*mix).to_string()))?]),
        Prompts::Mix(Mix::Embeddings) if shape.max_tokens.is_some() || shape.stream_share.is_some() => {
            Err("--max-tokens and --stream-share apply to chat mixes, not embeddings".into())
        }
        Prompts::Mix(mix) => {
            if let Some(share) = shape.stream_share.filter(|s| !(0.0..=1.0).contains(s)) {
                return Err(format!("--stream-share {share}: give a share between 0 and 1"));
            }
            let mut rng = StdRng::seed_from_u64(seed);
            (0..POOL)
                .map(|i| {
                    let mut body = base(*mix);
                    if let Some(dist) = shape.prompt_tokens {
                        let text = synthetic_text(dist.sample(&mut rng), &mut rng);
                        if *mix == Mix::Embeddings {
                            body["input"] = json!([text]);
                        } else {
                            body["messages"] = json!([{"role": "user", "content": text}]);
                        }
                    }
                    if let Some(dist) = shape.max_tokens {
                        body["max_tokens"] = json!(dist.sample(&mut rng));
                    }
                    if let Some(share) = shape.stream_share {
                        // Spread evenly: request i streams when the running share crosses a whole.
                        let stream = ((i + 1) as f64 * share).floor() > (i as f64 * share).floor();
                        body["stream"] = json!(stream);
                    }
                    if body.get("stream").and_then(Value::as_bool) == Some(true) {
                        body["stream_options"] = json!({"include_usage": true});
                    }
                    prepared(Bytes::from(body.to_string()))
                })
                .collect()
        }
    }
}

fn base(mix: Mix) -> Value {
    let short = || {
        json!({"messages": [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello! How are you today?"}], "max_tokens": 16})
    };
    match mix {
        Mix::ShortChat => short(),
        Mix::StreamChat => {
            let mut body = short();
            body["stream"] = json!(true);
            body
        }
        Mix::Embeddings => {
            json!({"input": ["The quick brown fox jumps over the lazy dog.", "Token buckets refill continuously."]})
        }
        Mix::LongChat => {
            let turn = "Explain, with an example, how a token bucket refills continuously and why a gateway reserves tokens before it forwards a request. ";
            let mut messages = vec![json!({"role": "system", "content": "You are a patient teacher."})];
            for i in 0..12 {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                messages.push(json!({"role": role, "content": turn.repeat(2)}));
            }
            json!({"messages": messages, "max_tokens": 128})
        }
    }
}

/// Common English words that are one cl100k token each with their leading space.
const WORDS: [&str; 48] = [
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " with", " was", " on", " be", " at",
    " by", " this", " have", " from", " or", " one", " had", " not", " but", " what", " all", " were", " when", " we",
    " there", " can", " an", " your", " which", " their", " said", " if", " do", " will", " each", " about", " how",
    " up", " out", " them", " then", " many", " some",
];

/// A text of exactly `tokens` tokens as tollgate's tokenizer counts them, different each call.
fn synthetic_text(tokens: u64, rng: &mut StdRng) -> String {
    let tokenizer = Tokenizer::Bpe;
    let mut text = String::with_capacity(tokens as usize * 6);
    text.push_str("Word");
    while (text.len() as u64) < tokens * 4 {
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    // Words are one token each, so a few steps of trimming or growing land on the count.
    loop {
        let count = tokenizer.count(&text);
        if count == tokens {
            return text;
        }
        if count > tokens {
            let cut = text.rfind(' ').unwrap_or(0);
            if cut == 0 {
                return text; // one token cannot be split further
            }
            text.truncate(cut);
        } else {
            for _ in count..tokens {
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_parse_and_draw_within_their_bounds() {
        assert_eq!(Dist::parse("128"), Ok(Dist::Fixed(128)));
        assert_eq!(Dist::parse("uniform:64-256"), Ok(Dist::Uniform(64, 256)));
        assert_eq!(Dist::parse("normal:128,32"), Ok(Dist::Normal { mean: 128.0, sd: 32.0 }));
        for bad in ["", "x", "uniform:9-3", "uniform:3", "normal:1", "-4"] {
            assert!(Dist::parse(bad).is_err(), "{bad}");
        }
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..1000).all(|_| (64..=256).contains(&Dist::Uniform(64, 256).sample(&mut rng))));
        let draws: Vec<u64> = (0..4000).map(|_| Dist::Normal { mean: 128.0, sd: 32.0 }.sample(&mut rng)).collect();
        let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
        assert!((mean - 128.0).abs() < 3.0, "{mean}");
    }

    #[test]
    fn synthetic_prompts_have_the_exact_token_count() {
        let mut rng = StdRng::seed_from_u64(3);
        for tokens in [1, 2, 7, 64, 300, 2048] {
            let text = synthetic_text(tokens, &mut rng);
            assert_eq!(Tokenizer::Bpe.count(&text), tokens, "{text}");
        }
    }

    #[test]
    fn a_shaped_mix_streams_its_share_and_sets_max_tokens() {
        let shape = Shape {
            prompt_tokens: Some(Dist::Fixed(50)),
            max_tokens: Some(Dist::Uniform(10, 20)),
            stream_share: Some(0.25),
        };
        let pool = prepare(&Prompts::Mix(Mix::ShortChat), shape, Some("d"), 1).unwrap_or_default();
        assert_eq!(pool.len(), POOL);
        assert_eq!(pool.iter().filter(|p| p.stream).count(), POOL / 4);
        for p in &pool {
            let body: Value = serde_json::from_slice(&p.body).unwrap_or_default();
            let max = body["max_tokens"].as_u64().unwrap_or(0);
            assert!((10..=20).contains(&max));
            let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
            assert_eq!(Tokenizer::Bpe.count(prompt), 50);
            assert_eq!(p.path, "/openai/deployments/d/chat/completions");
            assert_eq!(body["stream_options"]["include_usage"] == json!(true), p.stream);
        }
        assert!(prepare(&Prompts::Mix(Mix::Embeddings), shape, None, 1).is_err());
        let share = Shape { stream_share: Some(1.5), ..Shape::default() };
        assert!(prepare(&Prompts::Mix(Mix::ShortChat), share, None, 1).is_err());
    }

    #[test]
    fn streaming_is_read_from_the_parsed_body() {
        // A tab or newline after "stream": is still JSON, and still a stream.
        let body = Bytes::from_static(b"{\"messages\":[],\"stream\":\t\ntrue}");
        let pool = prepare(&Prompts::Body(body), Shape::default(), None, 0).unwrap_or_default();
        assert!(pool[0].stream);
        let embed = Bytes::from_static(b"{\"input\":\"x\"}");
        let pool = prepare(&Prompts::Body(embed), Shape::default(), None, 0).unwrap_or_default();
        assert_eq!((pool[0].path.as_str(), pool[0].stream), ("/embeddings", false));
        assert!(prepare(&Prompts::Body(Bytes::from_static(b"nope")), Shape::default(), None, 0).is_err());
    }

    #[test]
    fn replay_lines_are_bodies_or_timed_bodies() {
        let lines = parse_replay("{\"messages\":[]}\n\n{\"input\":\"a\"}\n").unwrap_or_default();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.at.is_none()));
        let timed = "{\"timestamp\":0,\"body\":{\"messages\":[]}}\n{\"timestamp\":1.5,\"body\":{\"messages\":[],\"stream\":true}}";
        let lines = parse_replay(timed).unwrap_or_default();
        assert_eq!(lines.iter().map(|l| l.at).collect::<Vec<_>>(), vec![Some(0.0), Some(1.5)]);
        let pool = prepare(&Prompts::Replay(lines), Shape::default(), None, 0).unwrap_or_default();
        assert_eq!((pool[1].stream, pool[1].at), (true, Some(1.5)));
        assert!(!String::from_utf8_lossy(&pool[0].body).contains("timestamp"));
        let err = parse_replay("{\"messages\":[]}\n[1]").err().unwrap_or_default();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_replay("{\"timestamp\":1,\"body\":{}}\n{\"messages\":[]}").is_err());
        assert!(parse_replay("{\"timestamp\":-1,\"body\":{}}").is_err());
        assert!(parse_replay("\n").is_err());
    }
}
