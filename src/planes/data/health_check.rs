//! Active health checks of pool backends: for deployments with `health_check_interval_ms`,
//! every backend of the pool is asked `GET /info` (with its key) that often, so a dead backend
//! is taken out before a client meets it and put back as soon as it answers.
//!
//! A backend's health is shared by every deployment over its URL, so each URL is checked once a
//! period (at the shortest interval any of its deployments asks for). A 2xx closes the breaker
//! at once; anything else (an error status, a refused connection, no answer within the interval
//! or the first-byte timeout, whichever is shorter) counts as a failure toward ejection, as a
//! failed request does. A pool of one backend is not checked: it keeps no health.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::api::ApiRoute;
use crate::core::worker::Worker;
use crate::planes::data::Gateway;
use crate::state::deployment::Deployment;

/// How often the table is looked at for checks that are due, at most.
const MAX_IDLE: Duration = Duration::from_secs(1);

impl Gateway {
    /// Runs the checks until `stop` turns true.
    pub async fn run_health_checks(self: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
        let mut next_due: HashMap<Arc<str>, Instant> = HashMap::new();
        loop {
            let table = self.deployments();
            let now = Instant::now();
            let mut wake = now + MAX_IDLE;
            let mut seen: HashSet<&str> = HashSet::new();
            for deployment in table.health_checked() {
                let Some(interval) = deployment.health_check_interval() else { continue };
                for (index, backend) in deployment.pool.backends.iter().enumerate() {
                    if !seen.insert(&*backend.bucket_key) {
                        continue;
                    }
                    let due = next_due.entry(Arc::clone(&backend.bucket_key)).or_insert(now);
                    if *due <= now {
                        *due = now + interval;
                        let (gateway, deployment) = (Arc::clone(&self), Arc::clone(deployment));
                        tokio::spawn(async move { gateway.check(&deployment, index, interval).await });
                    }
                    wake = wake.min(*due);
                }
            }
            next_due.retain(|key, _| seen.contains(&**key));
            drop(seen);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn check(&self, deployment: &Deployment, index: usize, interval: Duration) {
        let Some(backend) = deployment.pool.backends.get(index) else { return };
        // A backend behind a private CA is checked through its own pools (the first worker's).
        let client = backend.client.as_deref().unwrap_or(&self.health_client);
        let timeout = interval.min(deployment.first_byte_timeout);
        let sent = client
            .send(
                &deployment.name,
                backend,
                ApiRoute::Info,
                Method::GET,
                None,
                HeaderMap::new(),
                Bytes::new(),
                Worker(0),
                timeout,
            )
            .await;
        let ok = matches!(&sent, Ok(response) if response.status().is_success());
        let result = match &sent {
            Ok(_) if ok => "ok",
            Ok(response) if response.status().is_server_error() => "server_error",
            Ok(_) => "bad_status",
            Err(error) => super::failover::attempt_error_kind(error),
        };
        let labels = [deployment.counter_label(), deployment.backend_label(&backend.name), result];
        self.metrics.backend_health_checks.with_label_values(&labels).inc();
        if let Err(error) = &sent {
            tracing::debug!(deployment = deployment.name.as_str(), backend = &*backend.name, %error, "health check failed");
        }
        let change = deployment.pool.checked(index, ok);
        self.observe_change(deployment, backend, change);
    }
}
