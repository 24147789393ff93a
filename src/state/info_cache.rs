//! Each deployment's last `/info` answer (the data plane's `info` stage fills and serves it).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::core::clock::Clock;

/// One deployment's last `/info` answer.
#[derive(Debug)]
pub struct InfoCache {
    pub clock: Arc<dyn Clock>,
    /// Held across the fetch: concurrent misses wait for the one fetch instead of each forwarding.
    pub slot: tokio::sync::Mutex<Option<Kept>>,
}

#[derive(Debug)]
pub struct Kept {
    pub at_ns: u64,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

impl InfoCache {
    pub fn new(clock: Arc<dyn Clock>) -> InfoCache {
        InfoCache { clock, slot: tokio::sync::Mutex::new(None) }
    }
}
