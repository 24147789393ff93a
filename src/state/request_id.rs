//! Request ids: a random UUID (v4 layout) per request, returned as `x-request-id` and `apim-request-id`.

use http::HeaderValue;

#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

const HEX: &[u8; 16] = b"0123456789abcdef";

impl RequestId {
    /// Formats 128 random bits as `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx` on the stack; the header
    /// value is the only allocation.
    pub fn generate() -> RequestId {
        let bits: u128 = rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
        let mut text = [0u8; 36];
        let mut nibble = 0;
        for (i, byte) in text.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                *byte = b'-';
                continue;
            }
            *byte = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
        // Hex digits and dashes are always a valid header value; should that ever not hold, say
        // so rather than hand out one fixed id for every request.
        match HeaderValue::from_bytes(&text) {
            Ok(value) => RequestId(value),
            Err(error) => {
                tracing::error!(%error, "a request id could not be made into a header value");
                RequestId(HeaderValue::from_static("request-id-unavailable"))
            }
        }
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v4_shaped_and_unique() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_str(), b.as_str());
        let s = a.as_str();
        assert_eq!(s.len(), 36);
        assert_eq!(s.matches('-').count(), 4);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert!(s.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
    }
}
