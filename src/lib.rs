//! tollgate: a self-hosted gateway that turns model backends into serverless-style API endpoints.
//!
//! A request flows through these stages (see [`gateway`] for what each reads and adds):
//!
//! 0. **listen** ([`server`]): TCP, HTTP/1.1 and HTTP/2;
//! 1. **route** ([`gateway::route`]): operation and addressing mode;
//! 2. **find the deployment** ([`deployment`]): host label, path, header or body `model`;
//! 3. **authenticate** ([`gateway::auth`], [`keys`]): endpoint key digest, constant-time;
//! 4. **read the body** ([`gateway::body`]): bounded, validated JSON;
//! 5. **forward** ([`gateway::forward`]): pooled hyper client to the backend;
//! 6. **stream back** ([`gateway::body::ProxyBody`]): chunk by chunk;
//! 7. **record**: access log.
//!
//! Every rejection is an [`error::ApiError`], turned into the API's error JSON in one place.
//! [`config`] validates the TOML file once; [`runtime`] starts the listeners; [`mock_backend`]
//! is the built-in backend used by the embedded demo, tests and benchmarks.

pub mod admin;
pub mod bench;
pub mod config;
pub mod control;
pub mod deployment;
pub mod embedded;
pub mod error;
pub mod estimate;
pub mod gateway;
pub mod keys;
pub mod ledger;
pub mod meter;
pub mod metrics;
pub mod mock_backend;
pub mod quota;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod tls;
