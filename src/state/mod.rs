//! Layer 3, **state**: what a running gateway holds. The deployment table and each deployment's
//! backend client and caches, the quota store (memory or Redis), the usage totals, records and
//! their recorder, the Prometheus metrics, and the usage ledger. Imports core and config only.

pub mod admission_queue;
pub mod budget;
pub mod budget_alerts;
pub mod certificate;
pub mod consumer;
pub mod deployment;
pub mod ledger;
pub mod metrics;
pub mod pool;
pub mod quota_store;
pub mod record;
pub mod request_id;
pub mod scrape_gauges;
pub mod totals;
pub mod upstream;
