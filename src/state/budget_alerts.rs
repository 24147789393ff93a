//! What happens when a budget crosses a threshold: a metric, one log line, and (when
//! `[billing] webhook_url` is set) a signed webhook, sent in the background and retried with
//! backoff. A request never waits on any of it: the record only queues the crossing.
//!
//! The webhook is `POST`ed as JSON (see [`document`]) with `x-tollgate-signature:
//! sha256=<hex HMAC-SHA256 of the body with the webhook secret>` and `x-tollgate-delivery: <id>`,
//! where the id names the budget, period, period start and threshold: the same crossing always
//! has the same id (a receiver that sees it twice can tell).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::billing::WebhookConfig;
use crate::core::clock::Clock;
use crate::core::quota::period::Stamp;
use crate::state::budget::Crossing;
use crate::state::deployment::DeploymentTable;
use crate::state::ledger::report::format_unix;
use crate::state::metrics::Metrics;
use crate::state::quota_store::redis::RedisStore;

/// Crossings waiting for their webhook; past this many, new ones are counted and logged, not
/// sent (crossings are rare: a few per budget and period).
const QUEUE: usize = 1024;
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where crossings go.
pub struct BudgetAlerts {
    metrics: Arc<Metrics>,
    queue: Option<mpsc::Sender<Crossing>>,
    currency: Arc<str>,
}

/// Follows budgets' spend in the shared store: every [`SHARED_SPEND_EVERY`] (and once before
/// the gateway serves) it reads every budget's spend and takes in what other replicas spent, so a
/// hard budget refuses here too and their thresholds are reached here as well (the webhook is
/// still sent once: see [`RedisStore::claim_crossing`]).
pub struct SharedSpend {
    store: Arc<RedisStore>,
    live: Arc<arc_swap::ArcSwap<DeploymentTable>>,
    alerts: Arc<BudgetAlerts>,
    clock: Arc<dyn Clock>,
}

/// How often budgets' shared spend is read.
pub const SHARED_SPEND_EVERY: Duration = Duration::from_secs(1);

pub fn follow_shared_spend(
    store: Arc<RedisStore>,
    live: Arc<arc_swap::ArcSwap<DeploymentTable>>,
    alerts: Arc<BudgetAlerts>,
    clock: Arc<dyn Clock>,
) -> SharedSpend {
    SharedSpend { store, live, alerts, clock }
}

impl SharedSpend {
    /// Reads every budget's shared spend once and takes it in; the first time (`start`), what it
    /// had already reached is not crossed again here.
    pub async fn refresh(&self, start: bool) {
        let table = self.live.load_full();
        if table.budgets().is_empty() {
            return;
        }
        let stamp = Stamp::at(self.clock.unix_seconds());
        let Some(spent) = self.store.read_budgets(table.budgets(), stamp).await else { return };
        for (budget, (day, month)) in table.budgets().iter().zip(spent) {
            let crossings = budget.absorb(stamp, day, month);
            if !start {
                for crossing in crossings {
                    self.alerts.crossed(crossing);
                }
            }
        }
    }

    pub async fn run(self) {
        loop {
            tokio::time::sleep(SHARED_SPEND_EVERY).await;
            self.refresh(false).await;
        }
    }
}

impl BudgetAlerts {
    /// Alerts without a webhook (metrics and logs only).
    pub fn new(metrics: Arc<Metrics>, currency: Arc<str>) -> BudgetAlerts {
        BudgetAlerts { metrics, queue: None, currency }
    }

    /// Alerts with the webhook sender: spawn the returned future on the runtime.
    /// With `claim` (the shared store), a crossing's webhook is sent by the one replica that
    /// claims it first.
    pub fn with_webhook(
        metrics: Arc<Metrics>,
        currency: Arc<str>,
        webhook: WebhookConfig,
        claim: Option<Arc<RedisStore>>,
    ) -> (BudgetAlerts, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sender = send_all(rx, webhook, Arc::clone(&metrics), Arc::clone(&currency), claim);
        (BudgetAlerts { metrics, queue: Some(tx), currency }, sender)
    }

    /// A threshold was reached: counted, logged, and queued for the webhook.
    pub fn crossed(&self, crossing: Crossing) {
        let name = Arc::clone(&crossing.budget.name);
        let budget = &*name;
        let threshold = crossing.threshold.to_string();
        self.metrics.budget_crossings.with_label_values(&[budget, crossing.period.as_str(), threshold.as_str()]).inc();
        tracing::warn!(
            budget,
            scope = crossing.budget.scope.label(),
            period = crossing.period.as_str(),
            threshold = crossing.threshold,
            spent = %crossing.spent,
            amount = %crossing.amount,
            currency = &*self.currency,
            "budget threshold reached"
        );
        let Some(queue) = &self.queue else { return };
        if queue.try_send(crossing).is_err() {
            self.metrics.webhook_deliveries.with_label_values(&["dropped"]).inc();
            tracing::error!(budget, "budget webhook queue full: this crossing is not sent (it is in the log)");
        }
    }
}

/// The webhook's JSON document for a crossing.
pub fn document(crossing: &Crossing, currency: &str) -> serde_json::Value {
    let budget = &crossing.budget;
    json!({
        "type": "budget.threshold_reached",
        "id": delivery_id(crossing),
        "budget": &*budget.name,
        "scope": budget.scope.label(),
        "period": crossing.period.as_str(),
        "periodStart": format_unix(crossing.starts),
        "resetsAt": format_unix(crossing.ends),
        "thresholdPercent": crossing.threshold,
        "currency": currency,
        "amountMicros": crossing.amount.0,
        "spentMicros": crossing.spent.0,
        "amount": crossing.amount.to_string(),
        "spent": crossing.spent.to_string(),
        "hard": budget.hard,
    })
}

/// `<budget>:<period>:<period start>:<threshold>`.
fn delivery_id(crossing: &Crossing) -> String {
    format!("{}:{}:{}:{}", crossing.budget.name, crossing.period.as_str(), crossing.starts, crossing.threshold)
}

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return String::new() };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send_all(
    mut queue: mpsc::Receiver<Crossing>,
    webhook: WebhookConfig,
    metrics: Arc<Metrics>,
    currency: Arc<str>,
    claim: Option<Arc<RedisStore>>,
) {
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).build(https);
    let webhook = Arc::new(webhook);
    while let Some(crossing) = queue.recv().await {
        let body = Bytes::from(document(&crossing, &currency).to_string());
        let id = delivery_id(&crossing);
        if let Some(store) = &claim {
            if !store.claim_crossing(&id, crossing.ends).await {
                metrics.webhook_deliveries.with_label_values(&["sent_by_another_replica"]).inc();
                continue;
            }
        }
        // One task per crossing: a receiver that is down delays only its own retries.
        tokio::spawn(deliver(client.clone(), Arc::clone(&webhook), Arc::clone(&metrics), body, id));
    }
}

async fn deliver<C>(
    client: Client<C, Full<Bytes>>,
    webhook: Arc<WebhookConfig>,
    metrics: Arc<Metrics>,
    body: Bytes,
    id: String,
) where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let signature = signature(webhook.secret.expose().as_bytes(), &body);
    let mut wait = webhook.first_retry;
    for attempt in 1..=webhook.attempts {
        let request = http::Request::post(&webhook.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-tollgate-signature", &signature)
            .header("x-tollgate-delivery", &id)
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "budget webhook: the request could not be built");
                return;
            }
        };
        let why = match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                metrics.webhook_deliveries.with_label_values(&["delivered"]).inc();
                return;
            }
            Ok(Ok(response)) => format!("answered {}", response.status()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        if attempt == webhook.attempts {
            metrics.webhook_deliveries.with_label_values(&["failed"]).inc();
            tracing::error!(delivery = %id, attempts = attempt, reason = %why, "budget webhook not delivered; giving up");
            return;
        }
        metrics.webhook_deliveries.with_label_values(&["retried"]).inc();
        tracing::warn!(delivery = %id, attempt, reason = %why, retry_in_ms = wait.as_millis() as u64, "budget webhook failed; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
