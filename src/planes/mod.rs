//! Layer 4, the **planes**, side by side: the data plane ([`data`], the request pipeline, one
//! module per stage) and the control plane ([`control`], the admin API, persistence, reload).
//! The control plane publishes the deployment table the data plane reads; neither imports the
//! other (checked by `tests/layers.rs`). [`respond`] is the API's error and JSON responses both
//! listeners answer with.

pub mod control;
pub mod data;
pub mod respond;
