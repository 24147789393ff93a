//! tollgate: a self-hosted gateway that turns model backends into serverless-style API endpoints.
//!
//! The crate is five layers, each importing only from the layers below it (checked by
//! `tests/layers.rs`; `ARCHITECTURE.md` has the diagram):
//!
//! 1. [`core`]: pure logic (buckets, clock, limits, estimator, scanners, keys), no I/O, no HTTP;
//! 2. [`config`]: the TOML file and the validated [`config::Config`];
//! 3. [`state`]: what a running gateway holds (deployment table, quota store, metrics, ledger);
//! 4. [`planes`]: the data plane ([`planes::data`], one module per pipeline stage) and the control
//!    plane ([`planes::control`]) side by side;
//! 5. [`process`]: listeners, TLS, runtime wiring, `tollgate bench`, the mock backend.

pub mod config;
pub mod core;
pub mod planes;
pub mod process;
pub mod state;
