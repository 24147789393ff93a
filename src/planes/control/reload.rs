//! Reloading the configuration file safely: what a reload may not do without being forced, what
//! it cannot change without a restart, and how long a deployment that left the table is
//! remembered so that its buckets and totals come back with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Config;
use crate::state::deployment::{Deployment, DeploymentTable};

/// A deployment that left the table is remembered this long: a reload of a cut file followed by
/// the complete one (or a name deleted and created again) carries on with the same buckets and
/// totals instead of starting full and at zero.
pub const RETIRED_FOR: Duration = Duration::from_secs(15 * 60);

/// Why a reload changed nothing (or, for `Tls`, only the certificate failed).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload (the embedded demo runs without one)")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
    /// The file and the admin state disagree (a name used twice, a model in use removed).
    #[error(transparent)]
    Conflict(#[from] super::build::TableConflict),
    /// The file would remove every deployment or admin token (`?force=true` to do it anyway).
    #[error("{0}")]
    Refused(String),
    #[error("the configuration was reloaded, but not the TLS certificate: {0}")]
    Tls(crate::state::certificate::TlsError),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Deployments in the table after the reload.
    pub deployments: usize,
    /// Changes in the file that were not applied because they need a restart, each saying so.
    pub restart_needed: Vec<String>,
    /// Deployments built anew (the others were carried over as they were).
    pub rebuilt: usize,
    /// Reading and validating the file, and building and publishing the table.
    pub read: Duration,
    pub apply: Duration,
}

impl ReloadReport {
    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        json!({"reloaded": true, "deployments": self.deployments, "rebuilt": self.rebuilt,
               "readMs": ms(self.read), "applyMs": ms(self.apply), "restartNeeded": self.restart_needed})
    }
}

/// Refuses a reload that would take away every deployment or every admin token the running file
/// declares, which is what a file caught half-written looks like. `force` lets it through.
pub fn refuse_emptying(
    running: &Config,
    next: &Config,
    table_before: usize,
    table_after: usize,
) -> Result<(), ReloadError> {
    const HOW: &str = "nothing was changed; if this is intended, reload with POST /reload?force=true";
    if !running.deployments.is_empty() && next.deployments.is_empty() {
        return Err(ReloadError::Refused(format!(
            "the new file declares no deployments while the running one declares {} (a file caught while being written looks like this); {HOW}",
            running.deployments.len()
        )));
    }
    if table_before > 0 && table_after == 0 {
        return Err(ReloadError::Refused(format!(
            "the reload would leave no deployment at all (there are {table_before} now); {HOW}"
        )));
    }
    if !running.admin.tokens.is_empty() && next.admin.tokens.is_empty() {
        return Err(ReloadError::Refused(format!(
            "the new file declares no admin tokens while the running one declares {} (their holders would be locked out); {HOW}",
            running.admin.tokens.len()
        )));
    }
    Ok(())
}

/// Keeps in `next` the settings that are bound at start (listeners, body and client limits, the
/// backend client, the ledger, the quota store) and says, for each that the file changed, that it
/// needs a restart.
/// `file_listen` is what the file declared at start (the running addresses may come from the
/// command line).
pub fn keep_start_settings(
    running: &Config,
    file_listen: (std::net::SocketAddr, std::net::SocketAddr),
    next: &mut Config,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: String| {
        tracing::warn!("{what}");
        out.push(what);
    };
    let (old, new) = (&running.server, &mut next.server);
    if file_listen.0 != new.listen {
        note(format!(
            "[server] listen changed from {} to {}: listeners are bound at start, restart to apply it (still listening on {})",
            file_listen.0, new.listen, old.listen
        ));
    }
    // Everything else in [server] is compared with itself: only the listen address may have
    // come from the command line.
    new.listen = old.listen;
    match (&old.tls, &new.tls) {
        (None, Some(tls)) => note(format!(
            "[server.tls] was added (listen {}): the TLS listener is bound at start, restart to apply it",
            tls.listen
        )),
        (Some(tls), None) => {
            note(format!("[server.tls] was removed: the TLS listener on {} keeps running until a restart", tls.listen))
        }
        (Some(a), Some(b)) if a != b => note(format!(
            "[server.tls] changed (listen {} -> {}, or the certificate paths): restart to apply it; the certificate files at the old paths are re-read",
            a.listen, b.listen
        )),
        _ => {}
    }
    if old.max_body_bytes != new.max_body_bytes
        || old.limits != new.limits
        || old.public_url != new.public_url
        || old.workers != new.workers
        || old.server_timing != new.server_timing
    {
        note(
            "[server] body size, client limits, public_url, workers or server_timing changed: they are set at start, restart to apply them"
                .into(),
        );
    }
    *new = old.clone();
    // The pools per deployment follow the running workers, not the file's new count.
    next.backend.workers = running.backend.workers;
    if file_listen.1 != next.admin.listen {
        note(format!(
            "[admin] listen changed from {} to {}: restart to apply it (still listening on {})",
            file_listen.1, next.admin.listen, running.admin.listen
        ));
    }
    next.admin.listen = running.admin.listen;
    if running.admin.state_file != next.admin.state_file {
        note("[admin] state_file changed: the state file is opened at start, restart to apply it".into());
    }
    next.admin.state_file.clone_from(&running.admin.state_file);
    let backend_started = (
        running.backend.connect_timeout,
        running.backend.pool_idle_timeout,
        running.backend.stream_idle_timeout,
        running.backend.response_timeout,
    );
    let backend_next = (
        next.backend.connect_timeout,
        next.backend.pool_idle_timeout,
        next.backend.stream_idle_timeout,
        next.backend.response_timeout,
    );
    if backend_started != backend_next {
        note("[backend] connect, pool idle, stream idle or response timeouts changed: restart to apply them (first_byte_timeout_ms applies now)".into());
    }
    if running.ledger != next.ledger {
        note("the [ledger] section changed: the ledger is opened at start, restart to apply it".into());
        next.ledger.clone_from(&running.ledger);
    }
    if running.store != next.store {
        note("the [limits] section changed: the quota store is chosen at start, restart to apply it".into());
        next.store.clone_from(&running.store);
    }
    out
}

/// Deployments that left the table recently, by name, with when they left.
#[derive(Default)]
pub struct Retired(Vec<(Arc<Deployment>, Instant)>);

impl Retired {
    /// The table a new one is built from: the live deployments, and those retired recently whose
    /// name is not live (so a name coming back keeps its buckets and totals).
    pub fn with_live(&self, live: &DeploymentTable, now: Instant) -> DeploymentTable {
        let recent = self.0.iter().filter(|(_, at)| now.duration_since(*at) < RETIRED_FOR).map(|(d, _)| d);
        // Live entries come last and so win a name present in both.
        DeploymentTable::from_deployments(recent.chain(live.iter()).cloned().collect())
            .with_consumers(live.consumers().to_vec())
    }

    /// Remembers what left between `before` and `after`, and forgets what came back or is old.
    pub fn update(&mut self, before: &DeploymentTable, after: &DeploymentTable, now: Instant) {
        let gone: Vec<&Arc<Deployment>> = before.iter().filter(|d| after.get(&d.name).is_none()).collect();
        let leaving: std::collections::HashSet<&str> = gone.iter().map(|d| d.name.as_str()).collect();
        self.0.retain(|(d, at)| {
            after.get(&d.name).is_none() && !leaving.contains(d.name.as_str()) && now.duration_since(*at) < RETIRED_FOR
        });
        self.0.extend(gone.into_iter().map(|d| (Arc::clone(d), now)));
    }
}
