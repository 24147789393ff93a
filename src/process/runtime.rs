//! Starting and stopping a gateway: metrics, the usage ledger, and the data-plane and admin
//! listeners on their own tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config::StoreConfig;
use crate::core::clock::{Clock, MonotonicClock};
use crate::planes::control::ControlPlane;
use crate::planes::data::Gateway;
use crate::process::server::ServeOptions;
use crate::process::workers::Workers;
use crate::state::certificate::CertStore;
use crate::state::ledger::Ledger;
use crate::state::metrics::{Metrics, MetricsError};
use crate::state::quota_store::QuotaStore;
use crate::state::quota_store::redis::{RedisStore, StoreSetupError};
use crate::state::record::Recorder;
use tokio_rustls::TlsAcceptor;

/// A start-up failure, saying what could not be done.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("cannot open the usage ledger {path}: {source}")]
    Ledger { path: String, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot set up the control plane: {0}")]
    Control(#[from] crate::planes::control::OpenError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::state::certificate::TlsError),
    #[error("cannot start {count} worker threads: {source}")]
    Workers { count: usize, source: std::io::Error },
    #[error("cannot set up the quota store: {0}")]
    QuotaStore(#[from] StoreSetupError),
}

/// How to start beyond the configuration itself.
pub struct StartOptions {
    /// The quota buckets' clock (tests move a manual one).
    pub clock: Arc<dyn Clock>,
    /// The configuration file, to reload on SIGHUP or when it changes.
    pub config_path: Option<PathBuf>,
    /// The gateway and admin listen addresses the file declares, when the command line overrode
    /// them (a reload reports a change of the file's addresses, not the override).
    pub file_listen: Option<(SocketAddr, SocketAddr)>,
    /// How the admin state is written (the file when `None`; tests inject a slow writer).
    pub state_writer: Option<Arc<dyn crate::planes::control::StateWriter>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(MonotonicClock::new()),
            config_path: None,
            file_listen: None,
            state_writer: None,
        }
    }
}

/// The memory store's period quotas start from what the ledger says consumers used earlier in
/// the current UTC day and month (Redis keeps its own). A ledger that cannot be read is logged and
/// the quotas start from zero.
async fn rebuild_period_usage(control: &ControlPlane, path: &std::path::Path, clock: &dyn Clock) {
    let table = control.live().load_full();
    let any = table.consumers().iter().any(|c| c.periods.is_some() || c.grants.iter().any(|g| g.periods.is_some()));
    if !any {
        return;
    }
    let now = clock.unix_seconds();
    let path = path.to_owned();
    let read =
        tokio::task::spawn_blocking(move || crate::state::ledger::report::consumer_period_usage(&path, now)).await;
    match read {
        Ok(Ok(sums)) => {
            crate::state::consumer::seed_periods(table.consumers(), &sums, now);
            tracing::info!(
                consumers = sums.len(),
                "period quotas: usage of this UTC day and month rebuilt from the ledger"
            );
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "period quotas: cannot read the ledger; this day's and month's usage starts from zero")
        }
        Err(error) => tracing::warn!(%error, "period quotas: the ledger reader failed; usage starts from zero"),
    }
}

/// Budgets start from what the ledger says was spent earlier in the current UTC day and month
/// (thresholds already reached then are not crossed again). A ledger that cannot be read is
/// logged and the budgets start from zero.
async fn rebuild_budget_spend(control: &ControlPlane, path: &std::path::Path, clock: &dyn Clock) {
    let table = control.live().load_full();
    if table.budgets().is_empty() {
        return;
    }
    let now = clock.unix_seconds();
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || crate::state::ledger::report::budget_spend(&path, now)).await {
        Ok(Ok(sums)) => {
            let stamp = crate::core::quota::period::Stamp::at(now);
            for budget in table.budgets() {
                if let Some((day, month)) = sums.get(&budget.scope.label()) {
                    budget.seed(stamp, *day, *month);
                }
            }
            tracing::info!(
                budgets = table.budgets().len(),
                "budgets: this UTC day's and month's spend rebuilt from the ledger"
            );
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(error)) => tracing::warn!(%error, "budgets: cannot read the ledger; spend starts from zero"),
        Err(error) => tracing::warn!(%error, "budgets: the ledger reader failed; spend starts from zero"),
    }
}

/// A running gateway with its bound addresses (useful when the config asked for port 0).
pub struct RunningGateway {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The TLS listener's address, when `[server.tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub ledger: Option<Arc<Ledger>>,
    pub control: Arc<ControlPlane>,
    /// What `/readyz` answers: false from the start of shutdown, so load balancers drain us.
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    data_tasks: Vec<JoinHandle<()>>,
    /// The data plane's worker runtimes.
    workers: Arc<Workers>,
    admin_tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds both listeners and starts serving, on the real clock.
    pub async fn start(config: &Config) -> Result<RunningGateway, StartError> {
        RunningGateway::start_with(config, StartOptions::default()).await
    }

    pub async fn start_with(config: &Config, options: StartOptions) -> Result<RunningGateway, StartError> {
        let data = bind(config.server.listen, "gateway").await?;
        let admin = bind(config.admin.listen, "admin").await?;
        let gateway_addr = local_addr(&data, config.server.listen, "gateway")?;
        let admin_addr = local_addr(&admin, config.admin.listen, "admin")?;
        let tls = match &config.server.tls {
            None => None,
            Some(settings) => {
                let store = Arc::new(CertStore::open(&settings.cert, &settings.key).map_err(StartError::Tls)?);
                let acceptor =
                    TlsAcceptor::from(crate::process::server::tls_config(Arc::clone(&store)).map_err(StartError::Tls)?);
                let listener = bind(settings.listen, "gateway TLS").await?;
                let addr = local_addr(&listener, settings.listen, "gateway TLS")?;
                Some((store, acceptor, listener, addr))
            }
        };
        let metrics = Arc::new(Metrics::new(Registry::new())?);
        let ledger = match &config.ledger {
            None => {
                tracing::warn!("no [ledger] configured: usage records are counted but not written to disk");
                None
            }
            Some(ledger) => Some(Arc::new(
                Ledger::open(ledger.clone(), Arc::clone(&metrics))
                    .map_err(|source| StartError::Ledger { path: ledger.path.display().to_string(), source })?,
            )),
        };
        let quota = match &config.store {
            StoreConfig::Memory => QuotaStore::Memory,
            StoreConfig::Redis(settings) => QuotaStore::Redis(
                RedisStore::start(settings.clone(), Arc::clone(&options.clock), Arc::clone(&metrics)).await?,
            ),
        };
        let public_url = config.server.public_url.clone().unwrap_or_else(|| format!("http://{gateway_addr}"));
        let options_clock = Arc::clone(&options.clock);
        let mut control = ControlPlane::open(
            config.clone(),
            options.config_path.clone(),
            options.file_listen,
            options.clock,
            public_url,
            tls.as_ref().map(|t| Arc::clone(&t.0)),
            Arc::clone(&metrics),
        )
        .map_err(StartError::Control)?;
        if let Some(writer) = options.state_writer {
            control = control.with_state_writer(writer);
        }
        let control = Arc::new(control);
        if let (StoreConfig::Memory, Some(ledger)) = (&config.store, &config.ledger) {
            rebuild_period_usage(&control, &ledger.path, &*options_clock).await;
        }
        let shared = match &quota {
            QuotaStore::Redis(store) => Some(Arc::clone(store)),
            QuotaStore::Memory => None,
        };
        // Budgets' spend: from the ledger with the in-process store, from Redis with the shared one.
        if let (None, Some(ledger)) = (&shared, &config.ledger) {
            rebuild_budget_spend(&control, &ledger.path, &*options_clock).await;
        }
        let currency: Arc<str> = Arc::from(config.billing.currency.as_str());
        let alerts = Arc::new(match &config.billing.webhook {
            None => crate::state::budget_alerts::BudgetAlerts::new(Arc::clone(&metrics), currency),
            Some(webhook) => {
                let (alerts, sender) = crate::state::budget_alerts::BudgetAlerts::with_webhook(
                    Arc::clone(&metrics),
                    currency,
                    webhook.clone(),
                    shared.clone(),
                );
                tokio::spawn(sender);
                alerts
            }
        });
        if let Some(store) = &shared {
            let follow = crate::state::budget_alerts::follow_shared_spend(
                Arc::clone(store),
                control.live(),
                Arc::clone(&alerts),
                Arc::clone(&options_clock),
            );
            follow.refresh(true).await;
            tokio::spawn(follow.run());
        }
        let recorder = Arc::new(Recorder {
            metrics: Arc::clone(&metrics),
            ledger: ledger.clone(),
            alerts,
            shared: shared.clone(),
        });
        let gateway = Arc::new(Gateway::new(
            config,
            control.live(),
            recorder,
            Arc::clone(&metrics),
            quota,
            Arc::clone(&options_clock),
        ));
        let ready = Arc::new(AtomicBool::new(true));
        let admin_state = Arc::new(crate::planes::control::admin::Admin {
            metrics: Arc::clone(&metrics),
            quota: gateway.quota_store().clone(),
            control: Arc::clone(&control),
            ledger: ledger.clone(),
            ready: Arc::clone(&ready),
        });
        let workers = Arc::new(
            Workers::start(config.server.workers)
                .map_err(|source| StartError::Workers { count: config.server.workers, source })?,
        );
        let (stop, stopped) = watch::channel(false);
        let stopped_checks = stopped.clone();
        let (stop_admin, admin_stopped) = watch::channel(false);
        let handler = {
            let gateway = Arc::clone(&gateway);
            move |request, worker| {
                let gateway = Arc::clone(&gateway);
                async move { gateway.handle(request, worker).await }
            }
        };
        let admin_handler = move |request, _worker| {
            let admin = Arc::clone(&admin_state);
            async move { admin.handle(request).await }
        };
        let data_options = ServeOptions {
            limits: config.server.limits.clone(),
            connections: Some(metrics.open_connections.clone()),
            tls: None,
            workers: Some(Arc::clone(&workers)),
        };
        let admin_options =
            ServeOptions { limits: config.server.limits.clone(), connections: None, tls: None, workers: None };
        let mut data_tasks = Vec::new();
        let tls_addr = match tls {
            None => None,
            Some((_store, acceptor, listener, addr)) => {
                let options = ServeOptions { tls: Some(acceptor), ..data_options.clone() };
                data_tasks.push(tokio::spawn(crate::process::server::serve(
                    listener,
                    handler.clone(),
                    options,
                    stopped.clone(),
                )));
                Some(addr)
            }
        };
        data_tasks.push(tokio::spawn(crate::process::server::serve(data, handler, data_options, stopped)));
        data_tasks.push(tokio::spawn(Arc::clone(&gateway).run_health_checks(stopped_checks)));
        let admin_tasks = vec![
            tokio::spawn(crate::process::server::serve(admin, admin_handler, admin_options, admin_stopped.clone())),
            crate::planes::control::watch_config(Arc::clone(&control), admin_stopped),
        ];
        Ok(RunningGateway {
            gateway_addr,
            admin_addr,
            tls_addr,
            gateway,
            ledger,
            control,
            ready,
            stop,
            stop_admin,
            data_tasks,
            workers,
            admin_tasks,
        })
    }

    /// Turns unready, stops accepting, lets in-flight requests and streams finish (up to the
    /// shutdown grace period, then cuts and accounts for them), writes out the usage ledger, and
    /// finally closes the admin listener (which answered `/readyz` 503 meanwhile).
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
        // Requests waiting for a rate limit leave with 503 and `retry-after` now, rather than
        // holding the drain up until they would fit.
        self.gateway.close_queues();
        for task in self.data_tasks {
            let _ = task.await;
        }
        // Answers without usage may still be counted on the blocking pool: they settle there.
        self.gateway.counter().idle().await;
        // Every reservation is settled now: send the shared store what it is owed.
        self.gateway.quota_store().flush().await;
        if let Some(ledger) = self.ledger {
            let _ = tokio::task::spawn_blocking(move || ledger.close()).await;
        }
        // The serve loops are done, so this is the last reference: the workers end (idle
        // backend connections close) and their threads are joined.
        if let Ok(workers) = Arc::try_unwrap(self.workers) {
            let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        }
        let _ = self.stop_admin.send(true);
        for task in self.admin_tasks {
            let _ = task.await;
        }
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr, what: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind { addr, what, source })
}
