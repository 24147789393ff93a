//! The control plane: catalog, subscriptions, deployments, keys and admin tokens.
//!
//! Changes come from the admin API ([`api`]) and from reloading the configuration file
//! (SIGHUP, or the file changing). Every change is computed on a copy of the state, validated by
//! building the whole deployment table, persisted atomically, and only then applied by swapping
//! the table the data plane reads (`ArcSwap`: the request path takes no lock). Nothing is
//! half-applied; deployments that stay keep their quota levels and totals; in-flight requests
//! hold their own `Arc<Deployment>` and finish.

pub mod api;
mod build;
mod resources;
pub mod roles;
pub mod state;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::config::Config;
use crate::deployment::DeploymentTable;
use crate::keys::KeyDigest;
use crate::quota::clock::Clock;
use crate::tls::CertStore;
use roles::AdminToken;
use state::{ControlState, KeySecret};

/// A failed admin request: status, error code and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AdminError {
        AdminError { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn conflict(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::CONFLICT, "Conflict", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::UNPROCESSABLE_ENTITY, "UnprocessableEntity", message)
    }
    pub fn internal(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

struct Inner {
    config: Config,
    state: ControlState,
}

/// Owns the desired state and publishes the live deployment table.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    live: Arc<ArcSwap<DeploymentTable>>,
    secret: KeySecret,
    clock: Arc<dyn Clock>,
    config_path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    /// The gateway's URL as clients reach it.
    pub public_url: String,
    /// The TLS certificate, re-read on every reload.
    tls: Option<Arc<CertStore>>,
}

impl ControlPlane {
    /// Loads the admin state (and its key secret) and builds the first table.
    pub fn open(
        config: Config,
        config_path: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        public_url: String,
        tls: Option<Arc<CertStore>>,
    ) -> Result<ControlPlane, String> {
        let state_path = config.admin.state_file.clone();
        let (state, secret) = match &state_path {
            Some(path) => (
                ControlState::load(path)?,
                KeySecret::load_or_create(&path.with_extension("secret"))
                    .map_err(|e| format!("cannot read or create the key secret beside {}: {e}", path.display()))?,
            ),
            None => (ControlState::default(), KeySecret::random()),
        };
        let table = build::build_table(&config, &state, &secret, &DeploymentTable::default(), &clock)?;
        Ok(ControlPlane {
            inner: Mutex::new(Inner { config, state }),
            live: Arc::new(ArcSwap::from_pointee(table)),
            secret,
            clock,
            config_path,
            state_path,
            public_url,
            tls,
        })
    }

    /// The table the data plane reads.
    pub fn live(&self) -> Arc<ArcSwap<DeploymentTable>> {
        Arc::clone(&self.live)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change: on a copy, validated by building the table, persisted, then swapped in.
    fn change<T>(
        &self,
        apply: impl FnOnce(&Config, &mut ControlState) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        let result = apply(&inner.config, &mut next)?;
        let table = build::build_table(&inner.config, &next, &self.secret, &self.live.load(), &self.clock)
            .map_err(AdminError::conflict)?;
        if let Some(path) = &self.state_path {
            next.save(path).map_err(|e| {
                AdminError::internal(format!("cannot save {}: {e}; nothing was changed", path.display()))
            })?;
        }
        inner.state = next;
        self.live.store(Arc::new(table));
        Ok(result)
    }

    /// Reads the current configuration and state (for the read-only endpoints).
    fn read<T>(&self, look: impl FnOnce(&Config, &ControlState) -> T) -> T {
        let inner = self.lock();
        look(&inner.config, &inner.state)
    }

    /// Re-reads the configuration file. An invalid file changes nothing and says why.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.config_path else {
            return Err("no configuration file to reload (the embedded demo runs without one)".into());
        };
        let mut config = Config::load(path).map_err(|e| e.to_string())?;
        let mut inner = self.lock();
        // Listeners, the ledger and the state file are bound at start; they change on restart.
        config.server.listen = inner.config.server.listen;
        config.admin.listen = inner.config.admin.listen;
        config.admin.state_file.clone_from(&inner.config.admin.state_file);
        if config.ledger != inner.config.ledger {
            tracing::warn!("the [ledger] section changed: it takes effect at the next restart");
            config.ledger.clone_from(&inner.config.ledger);
        }
        if config.store != inner.config.store {
            tracing::warn!("the [limits] section changed: the quota store is chosen at start, restart to apply it");
            config.store.clone_from(&inner.config.store);
        }
        let table = build::build_table(&config, &inner.state, &self.secret, &self.live.load(), &self.clock)?;
        let count = table.len();
        inner.config = config;
        self.live.store(Arc::new(table));
        if let Some(tls) = &self.tls {
            tls.reload().map_err(|e| format!("the configuration was reloaded, but not the TLS certificate: {e}"))?;
        }
        Ok(count)
    }

    /// The admin token presented as `Authorization: Bearer <token>`, checked in constant time
    /// against every configured and created token.
    pub fn authenticate(&self, presented: &[u8]) -> Option<AdminToken> {
        let digest = KeyDigest::of(presented);
        self.read(|config, state| {
            let mut found = None;
            for token in config.admin.tokens.iter() {
                if token.digest.ct_eq(&digest) {
                    found = Some(token.clone());
                }
            }
            for stored in &state.tokens {
                if let Ok(d) = KeyDigest::parse_stored(&stored.digest) {
                    if d.ct_eq(&digest) {
                        found = Some(AdminToken {
                            name: stored.name.clone(),
                            role: stored.role,
                            digest: d,
                            projects: stored.projects.clone(),
                            from_file: false,
                        });
                    }
                }
            }
            found
        })
    }
}

/// Reloads the configuration whenever its file changes (checked every second) and on SIGHUP.
pub fn watch_config(
    control: Arc<ControlPlane>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(path) = control.config_path.clone() else { return };
        let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
        let mut last = stamp(&path);
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    let now = stamp(&path);
                    if now == last { continue; }
                    last = now;
                    "the configuration file changed"
                }
                _ = hangup => "SIGHUP",
                () = stop_requested(&mut stop) => return,
            };
            let control = Arc::clone(&control);
            match tokio::task::spawn_blocking(move || control.reload()).await {
                Ok(Ok(count)) => tracing::info!(deployments = count, "configuration reloaded ({why})"),
                Ok(Err(error)) => {
                    tracing::error!(%error, "configuration not reloaded ({why}); the running configuration stays")
                }
                Err(error) => tracing::error!(%error, "configuration reload failed"),
            }
        }
    })
}

async fn stop_requested(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
