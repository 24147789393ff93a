//! Backend pools, as pure logic: which backend of a deployment's pool takes the next attempt
//! ([`select`]), each backend's health as seen by the gateway ([`health`]: cooling after a 429,
//! ejected by the circuit breaker after repeated failures, probed back), and the backend's own
//! word on when to come back ([`retry_after`]).
//!
//! Times are nanoseconds of the injected [`crate::core::clock::Clock`], so tests move time
//! instead of sleeping. The state layer (`state/pool.rs`) holds these under its locks.

pub mod health;
pub mod retry_after;
pub mod select;

/// Most backends in one pool: an attempt's "already tried" set is one `u64` bit mask.
pub const MAX_BACKENDS: usize = 64;

/// Attempts per request unless the deployment says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
