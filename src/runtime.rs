//! Starting and stopping a gateway: the data-plane and admin listeners on their own tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::meter::totals::UsageTotals;
use crate::quota::clock::{Clock, MonotonicClock};

/// A start-up failure, saying what could not be done.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
}

/// A running gateway with its bound addresses (useful when the config asked for port 0).
pub struct RunningGateway {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds both listeners and starts serving, on the real clock.
    pub async fn start(config: &Config) -> Result<RunningGateway, StartError> {
        RunningGateway::start_with_clock(config, Arc::new(MonotonicClock::new())).await
    }

    /// As [`start`](Self::start), with the quota buckets on `clock` (tests move a manual clock).
    pub async fn start_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<RunningGateway, StartError> {
        let data = bind(config.server.listen, "gateway").await?;
        let admin = bind(config.admin.listen, "admin").await?;
        let gateway_addr = local_addr(&data, config.server.listen, "gateway")?;
        let admin_addr = local_addr(&admin, config.admin.listen, "admin")?;
        let gateway = Arc::new(Gateway::new(config, clock, Arc::new(UsageTotals)));
        let admin_state = Arc::new(crate::admin::Admin { gateway: Arc::clone(&gateway) });
        let (stop, stopped) = watch::channel(false);
        let handler = {
            let gateway = Arc::clone(&gateway);
            move |request| {
                let gateway = Arc::clone(&gateway);
                async move { gateway.handle(request).await }
            }
        };
        let tasks = vec![
            tokio::spawn(crate::server::serve(data, handler, stopped.clone())),
            tokio::spawn(crate::server::serve(
                admin,
                move |request| {
                    let admin = Arc::clone(&admin_state);
                    async move { admin.handle(request).await }
                },
                stopped,
            )),
        ];
        Ok(RunningGateway { gateway_addr, admin_addr, gateway, stop, tasks })
    }

    /// Stops accepting and waits for in-flight requests to finish (up to the drain deadline).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
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
