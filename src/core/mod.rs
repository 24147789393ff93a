//! Layer 1, **core**: pure logic, no I/O and no HTTP or async runtime types (checked by
//! `tests/layers.rs`). Token-bucket arithmetic and the clock, limits, the estimator, the answer
//! scanners and the usage chunk, key digests, roles, secrets. Each part has its own small error
//! type; none knows about HTTP responses.

pub mod api;
pub mod billing;
pub mod clock;
pub mod estimate;
pub mod keys;
pub mod meter;
pub mod pool;
pub mod quota;
pub mod roles;
pub mod secret;
pub mod utc;
pub mod worker;
