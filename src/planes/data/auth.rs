//! Stage 3, authenticate: the caller's endpoint key against the deployment's two key digests.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::core::keys::{KeyDigest, KeySlot};
use crate::planes::data::error::ApiError;
use crate::state::deployment::Deployment;

/// The key a client presented: `api-key: K` wins over `Authorization: Bearer K` (the Azure SDK sends
/// both with the same key; a client sending only one is served either way).
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(super::names::API_KEY) {
        return Some(value.as_bytes().trim_ascii());
    }
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let scheme_len = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(scheme_len);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

/// The digest of the presented key, when there is a non-empty one.
pub fn presented_digest(headers: &HeaderMap) -> Option<KeyDigest> {
    presented_key(headers).filter(|k| !k.is_empty()).map(KeyDigest::of)
}

/// Which key slot authenticated the request, or 401. `digest` is the presented key's digest when
/// an earlier stage already computed it (to find the deployment from the key).
pub fn authenticate(
    deployment: &Deployment,
    headers: &HeaderMap,
    digest: Option<KeyDigest>,
) -> Result<KeySlot, ApiError> {
    digest
        .or_else(|| presented_digest(headers))
        .and_then(|digest| deployment.keys.check_digest(&digest))
        .ok_or_else(|| ApiError::Unauthorized { deployment: deployment.name.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn key_headers() {
        assert_eq!(presented_key(&headers(&[("api-key", "abc")])), Some(&b"abc"[..]));
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer abc")])), Some(&b"abc"[..]));
        assert_eq!(presented_key(&headers(&[("authorization", "bearer  abc ")])), Some(&b"abc"[..]));
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(presented_key(&headers(&[("api-key", "a"), ("authorization", "Bearer b")])), Some(&b"a"[..]));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
