//! The body scan's seeds for `prompt` and `input` (completions and embeddings): strings, token
//! ids, nested arrays of either, and image inputs.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::scan::Text;
use super::{Tokenizer, image_tokens};

/// `prompt` / `input`: a string, token ids, or arrays of either (nested), or null.
pub(super) struct TextsSeed(pub(super) Tokenizer);

impl<'de> DeserializeSeed<'de> for TextsSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextsSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an array of strings, or token ids")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        Ok(self.0.count(v))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        if v < 0 { Err(E::custom("token ids cannot be negative")) } else { Ok(1) }
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0;
        while let Some(tokens) = seq.next_element_seed(TextsSeed(self.0))? {
            total += tokens;
        }
        Ok(total)
    }
}

/// Image embeddings `input`: `[{"image": "data:...", "text"?: "..."}]`.
pub(super) struct ImageInputsSeed(pub(super) Tokenizer);

impl<'de> DeserializeSeed<'de> for ImageInputsSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ImageInputsSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of {\"image\", \"text\"} objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0;
        while let Some(tokens) = seq.next_element_seed(ImageInputSeed(self.0))? {
            total += tokens;
        }
        Ok(total)
    }
}

struct ImageInputSeed(Tokenizer);

impl<'de> DeserializeSeed<'de> for ImageInputSeed {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ImageInputSeed {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an {\"image\", \"text\"} object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut total = 0;
        let mut has_image = false;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "image" => {
                    map.next_value::<IgnoredAny>()?;
                    has_image = true;
                }
                "text" => total += self.0.count(&map.next_value::<Text<'de>>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !has_image {
            return Err(A::Error::custom("each image embeddings input needs an \"image\""));
        }
        Ok(total + image_tokens(None))
    }
}
