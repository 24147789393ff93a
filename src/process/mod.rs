//! Layer 5, **process**: listeners and TLS, wiring a running gateway together, the embedded
//! demo, `tollgate bench`, and the mock backend.

pub mod bench;
pub mod embedded;
pub mod logging;
pub mod mock_backend;
pub mod runtime;
pub mod server;
pub mod workers;
