//! The control plane: catalog, subscriptions, deployments, keys and admin tokens.
//!
//! Changes come from the admin API ([`api`]) and from reloading the configuration file
//! (SIGHUP, or the file changing). Every change is computed on a copy of the state, validated by
//! building the whole deployment table, persisted atomically, and only then applied by swapping
//! the table the data plane reads (`ArcSwap`: the request path takes no lock). Nothing is
//! half-applied; deployments that stay keep their quota levels and totals; in-flight requests
//! hold their own `Arc<Deployment>` and finish.

pub mod admin;

/// What the admin listener answers with.
pub type AdminBody = http_body_util::Full<bytes::Bytes>;
pub mod api;
mod build;
pub mod consumers;
mod ledger_reports;
pub mod paging;
pub mod reload;
mod resources;
pub mod state;
mod subscriptions;
mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::config::Config;
use crate::core::clock::Clock;
use crate::core::keys::KeyDigest;
use crate::core::roles::AdminToken;
use crate::state::certificate::CertStore;
use crate::state::deployment::DeploymentTable;
use crate::state::metrics::Metrics;
use reload::{ReloadError, ReloadReport, Retired};
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

/// The configuration and admin state as last applied: read without a lock (admin reads and
/// token checks never wait for a change in progress).
struct Snapshot {
    config: Config,
    state: ControlState,
}

/// What only changes touch, under the one lock that puts changes in order.
struct Writer {
    /// Deployments that left the table lately (see [`reload::RETIRED_FOR`]).
    retired: Retired,
    /// The listen addresses (gateway, admin) the file declared at start, before any command-line
    /// override: what a reload compares the file's addresses with.
    file_listen: (std::net::SocketAddr, std::net::SocketAddr),
}

/// Writes the admin state durably. The file (temp, fsync, rename, fsync dir) in production;
/// tests inject a slow one to show that nothing else waits for it.
pub trait StateWriter: Send + Sync {
    fn save(&self, state: &ControlState, path: &std::path::Path) -> std::io::Result<()>;
}

/// [`ControlState::save`].
pub struct FileStateWriter;

impl StateWriter for FileStateWriter {
    fn save(&self, state: &ControlState, path: &std::path::Path) -> std::io::Result<()> {
        state.save(path)
    }
}

/// Owns the desired state and publishes the live deployment table.
///
/// Changes (admin writes, reloads) are blocking work (building the table, fsyncing the state
/// file): callers on the async runtime run them with `spawn_blocking`. They take the writer lock,
/// compute and persist the next state, and then publish it with two `ArcSwap` stores; reads
/// (admin GETs, token checks, the data plane) only load snapshots.
/// Why the control plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    State(#[from] state::StateLoadError),
    #[error("cannot read or create the key secret beside {}: {source}", beside.display())]
    Secret { beside: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Table(#[from] build::TableConflict),
}

pub struct ControlPlane {
    writer: Mutex<Writer>,
    snapshot: ArcSwap<Snapshot>,
    state_writer: Arc<dyn StateWriter>,
    live: Arc<ArcSwap<DeploymentTable>>,
    secret: KeySecret,
    clock: Arc<dyn Clock>,
    config_path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    /// The gateway's URL as clients reach it.
    pub public_url: String,
    /// The TLS certificate, re-read on every reload.
    tls: Option<Arc<CertStore>>,
    metrics: Arc<Metrics>,
}

impl ControlPlane {
    /// Loads the admin state (and its key secret) and builds the first table.
    pub fn open(
        config: Config,
        config_path: Option<PathBuf>,
        file_listen: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
        clock: Arc<dyn Clock>,
        public_url: String,
        tls: Option<Arc<CertStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<ControlPlane, OpenError> {
        let state_path = config.admin.state_file.clone();
        let (state, secret) = match &state_path {
            Some(path) => (
                ControlState::load(path)?,
                KeySecret::load_or_create(&path.with_extension("secret"))
                    .map_err(|source| OpenError::Secret { beside: path.clone(), source })?,
            ),
            None => (ControlState::default(), KeySecret::random()),
        };
        let table = build::build_table(&config, &state, &secret, &DeploymentTable::default(), &clock, None)?;
        Ok(ControlPlane {
            writer: Mutex::new(Writer {
                file_listen: file_listen.unwrap_or((config.server.listen, config.admin.listen)),
                retired: Retired::default(),
            }),
            snapshot: ArcSwap::from_pointee(Snapshot { config, state }),
            state_writer: Arc::new(FileStateWriter),
            live: Arc::new(ArcSwap::from_pointee(table)),
            secret,
            clock,
            config_path,
            state_path,
            public_url,
            tls,
            metrics,
        })
    }

    /// The table the data plane reads.
    pub fn live(&self) -> Arc<ArcSwap<DeploymentTable>> {
        Arc::clone(&self.live)
    }

    /// Writes the admin state with `writer` instead of the file's atomic write (tests).
    pub fn with_state_writer(mut self, writer: Arc<dyn StateWriter>) -> ControlPlane {
        self.state_writer = writer;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change: on a copy, validated by building the table, persisted, then swapped in.
    fn change<T>(
        &self,
        apply: impl FnOnce(&Config, &mut ControlState) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let mut writer = self.lock();
        let current = self.snapshot.load_full();
        let mut next = current.state.clone();
        let result = apply(&current.config, &mut next)?;
        let now = std::time::Instant::now();
        let before = self.live.load_full();
        let previous = writer.retired.with_live(&before, now);
        let reuse = build::Reuse { config: &current.config, state: &current.state, live: &before };
        let table = build::build_table(&current.config, &next, &self.secret, &previous, &self.clock, Some(&reuse))
            .map_err(|e| AdminError::conflict(e.to_string()))?;
        if let Some(path) = &self.state_path {
            self.state_writer.save(&next, path).map_err(|e| {
                AdminError::internal(format!("cannot save {}: {e}; nothing was changed", path.display()))
            })?;
        }
        writer.retired.update(&before, &table, now);
        self.snapshot.store(Arc::new(Snapshot { config: current.config.clone(), state: next }));
        let table = Arc::new(table);
        self.live.store(Arc::clone(&table));
        self.metrics.forget(&before, &table);
        Ok(result)
    }

    /// Reads the current configuration and state (for the read-only endpoints).
    fn read<T>(&self, look: impl FnOnce(&Config, &ControlState) -> T) -> T {
        let snapshot = self.snapshot.load();
        look(&snapshot.config, &snapshot.state)
    }

    /// Re-reads the configuration file. An invalid file changes nothing and says why; so does one
    /// that would remove every deployment or every admin token, unless `force`. Settings bound at
    /// start keep their running values and are listed in the report as needing a restart.
    pub fn reload(&self, force: bool) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload(force);
        self.metrics.observe_reload(result.is_ok());
        result
    }

    fn try_reload(&self, force: bool) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoFile);
        };
        let started = std::time::Instant::now();
        let mut config = Config::load(path)?;
        let read = started.elapsed();
        let mut writer = self.lock();
        let current = self.snapshot.load_full();
        config.share_unchanged(&current.config);
        let now = std::time::Instant::now();
        let before = self.live.load_full();
        let previous = writer.retired.with_live(&before, now);
        let reuse = build::Reuse { config: &current.config, state: &current.state, live: &before };
        let table = build::build_table(&config, &current.state, &self.secret, &previous, &self.clock, Some(&reuse))
            .map_err(ReloadError::Conflict)?;
        if !force {
            reload::refuse_emptying(&current.config, &config, before.len(), table.len())?;
        }
        let restart_needed = reload::keep_start_settings(&current.config, writer.file_listen, &mut config);
        let deployments = table.len();
        writer.retired.update(&before, &table, now);
        self.snapshot.store(Arc::new(Snapshot { config, state: current.state.clone() }));
        let table = Arc::new(table);
        self.live.store(Arc::clone(&table));
        self.metrics.forget(&before, &table);
        if let Some(tls) = &self.tls {
            tls.reload().map_err(ReloadError::Tls)?;
        }
        let rebuilt = table.iter().filter(|d| before.get(&d.name).is_none_or(|b| !Arc::ptr_eq(b, d))).count();
        Ok(ReloadReport { deployments, restart_needed, rebuilt, read, apply: started.elapsed() - read })
    }

    /// Whether `/metrics` keeps series per consumer (`[metrics] consumers`).
    pub fn consumer_metrics(&self) -> bool {
        self.read(|config, _| config.metrics.consumers)
    }

    /// Whether a presented bearer token is the configured metrics token (`None` when `/metrics`
    /// is open).
    pub fn metrics_token_matches(&self, presented: Option<&[u8]>) -> Option<bool> {
        let expected = self.read(|config, _| config.admin.metrics_token)?;
        Some(presented.is_some_and(|p| expected.ct_eq(&KeyDigest::of(p))))
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

/// How often the watcher looks at the file, and how long a change must rest before it is read:
/// an editor or `cp` writing in place truncates first and writes after, and the file is only
/// read once it has stopped changing.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(100);
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_millis(500);
const SETTLE_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

/// What the watcher compares: modification time and length.
type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.modified().ok(), m.len()))
}

/// Waits until the file has not changed for [`SETTLE_FOR`] (at most [`SETTLE_AT_MOST`]) and
/// returns its stamp then.
async fn settled(path: &std::path::Path, mut last: Stamp) -> Stamp {
    let started = tokio::time::Instant::now();
    let mut quiet_since = tokio::time::Instant::now();
    while quiet_since.elapsed() < SETTLE_FOR && started.elapsed() < SETTLE_AT_MOST {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = stamp(path);
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        }
    }
    last
}

/// Reloads the configuration whenever its file changes (once it has settled) and on SIGHUP.
pub fn watch_config(
    control: Arc<ControlPlane>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(path) = control.config_path.clone() else { return };
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
                _ = tokio::time::sleep(WATCH_EVERY) => {
                    let now = stamp(&path);
                    if now == last { continue; }
                    last = settled(&path, now).await;
                    "the configuration file changed"
                }
                _ = hangup => "SIGHUP",
                () = stop_requested(&mut stop) => return,
            };
            let control = Arc::clone(&control);
            match tokio::task::spawn_blocking(move || control.reload(false)).await {
                Ok(Ok(report)) => tracing::info!(
                    deployments = report.deployments,
                    rebuilt = report.rebuilt,
                    read_ms = report.read.as_secs_f64() * 1e3,
                    apply_ms = report.apply.as_secs_f64() * 1e3,
                    restart_needed = report.restart_needed.len(),
                    "configuration reloaded ({why})"
                ),
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
