//! The mock's embeddings: deterministic unit vectors per input (float lists or base64 of
//! little-endian float32), billed like the service bills them.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::MockOptions;

use super::inference::{Failure, IMAGE_TOKENS, id, parse, text_tokens};

pub fn embeddings(options: &MockOptions, body: &[u8]) -> Result<Bytes, Failure> {
    let request = parse(body)?;
    let inputs: Vec<&str> = match request.get("input") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "UserError",
                "'input' must be a string or an array of strings".into(),
            ));
        }
    };
    let dimensions = dimensions(&request);
    let base64 = base64_format(&request)?;
    let prompt: u64 = inputs.iter().map(|t| text_tokens(t)).sum();
    Ok(embedding_list(options, inputs.iter().map(|t| vector(t, dimensions)).collect(), prompt, base64))
}

pub fn image_embeddings(options: &MockOptions, body: &[u8]) -> Result<Bytes, Failure> {
    let request = parse(body)?;
    let Some(items) = request.get("input").and_then(Value::as_array) else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "UserError",
            "'input' must be an array of {\"image\", \"text\"?}".into(),
        ));
    };
    let dimensions = dimensions(&request);
    let base64 = base64_format(&request)?;
    let mut prompt = 0;
    let mut vectors = Vec::with_capacity(items.len());
    for item in items {
        let image = item.get("image").and_then(Value::as_str).ok_or_else(|| {
            (StatusCode::UNPROCESSABLE_ENTITY, "UserError", "each input needs an 'image' data URL".to_owned())
        })?;
        let text = item.get("text").and_then(Value::as_str).unwrap_or("");
        prompt += IMAGE_TOKENS + text_tokens(text);
        vectors.push(vector(&format!("{image}{text}"), dimensions));
    }
    Ok(embedding_list(options, vectors, prompt, base64))
}

/// `encoding_format`: `"float"` (default) or `"base64"` (what the Node `openai` SDK asks for).
fn base64_format(request: &Value) -> Result<bool, Failure> {
    match request.get("encoding_format") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(f)) if f == "float" => Ok(false),
        Some(Value::String(f)) if f == "base64" => Ok(true),
        Some(other) => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "UserError",
            format!("'encoding_format' must be \"float\" or \"base64\", not {other}"),
        )),
    }
}

/// A vector as base64 of its little-endian float32 bytes (the OpenAI wire form).
fn base64_vector(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn dimensions(request: &Value) -> usize {
    request.get("dimensions").and_then(Value::as_u64).map_or(16, |d| d.clamp(1, 4096) as usize)
}

fn embedding_list(options: &MockOptions, vectors: Vec<Vec<f32>>, prompt: u64, base64: bool) -> Bytes {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            let embedding = if base64 { json!(base64_vector(&embedding)) } else { json!(embedding) };
            json!({"index": index, "object": "embedding", "embedding": embedding})
        })
        .collect();
    Bytes::from(
        json!({"id": id(), "object": "list", "data": data, "model": options.model_name,
               "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
        .to_string(),
    )
}

/// A deterministic unit vector derived from the text (FNV-1a seeded xorshift).
fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state =
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::EPSILON);
    values.iter_mut().for_each(|v| *v /= norm);
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors_are_little_endian_float32() {
        use base64::Engine as _;
        let encoded = base64_vector(&[1.0, -0.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
    }

    #[test]
    fn vectors_are_unit_length_and_stable() {
        let a = vector("x", 16);
        assert_eq!(a, vector("x", 16));
        assert!((a.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
