//! Stage 3, authenticate: the caller's key against the deployment's two key digests, then (when
//! it is neither) against the consumers': a consumer key is accepted on the deployments its
//! consumer is granted.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::core::keys::{KeyDigest, KeySlot};
use crate::planes::data::error::ApiError;
use crate::state::consumer::ConsumerGrant;
use crate::state::deployment::{Deployment, DeploymentTable};

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

/// Who is calling: which key slot, and the consumer when it is a consumer's key.
pub struct Caller {
    pub key_slot: KeySlot,
    pub consumer: Option<ConsumerGrant>,
}

/// Which key authenticated the request, or 401. `digest` is the presented key's digest when an
/// earlier stage already computed it (to find the deployment from the key). `table` is read only
/// when the key is not one of the deployment's own (an endpoint key costs no consumer lookup).
pub fn authenticate(
    deployment: &Deployment,
    headers: &HeaderMap,
    digest: Option<KeyDigest>,
    table: impl FnOnce() -> arc_swap::Guard<std::sync::Arc<DeploymentTable>>,
) -> Result<Caller, ApiError> {
    let unauthorized = || ApiError::Unauthorized { deployment: deployment.name.clone() };
    let digest = digest.or_else(|| presented_digest(headers)).ok_or_else(unauthorized)?;
    if let Some(key_slot) = deployment.keys.check_digest(&digest) {
        return Ok(Caller { key_slot, consumer: None });
    }
    let table = table();
    let consumer = table.consumer_for_key(&digest).ok_or_else(unauthorized)?;
    let key_slot = consumer.check_digest(&digest).ok_or_else(unauthorized)?;
    let index = consumer.grant_index(&deployment.name).ok_or_else(|| ApiError::NotGranted {
        consumer: consumer.label.to_string(),
        deployment: deployment.name.clone(),
    })?;
    Ok(Caller { key_slot, consumer: Some(ConsumerGrant { consumer: std::sync::Arc::clone(consumer), index }) })
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
