//! Which data-plane worker a connection is served on. Each worker is one thread with its own
//! runtime (`process::workers`); state kept per worker (the backend pools) is picked by it.

/// A worker's index, from 0 to `server.workers - 1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worker(pub usize);
