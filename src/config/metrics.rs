//! `[metrics]`: how much detail `/metrics` keeps per deployment, per consumer and per pool
//! backend. Each label value is a series; at 10,000 deployments the detail decides whether a
//! scrape is 80 MB or 3 MB (the README's table says what each level costs).

use std::collections::HashSet;

use toml::Spanned;

use super::raw::RawMetrics;
use super::{ConfigError, Locator};

/// What one deployment exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeploymentDetail {
    /// Nothing of its own: its requests count in the gateway-wide series (`deployment=""`).
    Off,
    /// Its counters (requests by route and code, tokens, refusals, errors, retries) and its
    /// limits; its histograms, in-flight count and token split count gateway-wide.
    #[default]
    Summary,
    /// Everything: its own latency and estimate histograms, tokens by kind, what its buckets
    /// hold, its in-flight count.
    Full,
}

impl DeploymentDetail {
    fn parse(text: &str) -> Option<DeploymentDetail> {
        match text {
            "off" => Some(DeploymentDetail::Off),
            "summary" => Some(DeploymentDetail::Summary),
            "full" => Some(DeploymentDetail::Full),
            _ => None,
        }
    }
}

/// `[metrics]`, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Every deployment's detail, but those in `full_detail`.
    pub deployments: DeploymentDetail,
    /// Deployments (by name) with full detail whatever `deployments` says.
    pub full_detail: HashSet<String>,
    /// Series per consumer (requests, tokens, refusals on each deployment; period quota gauges).
    pub consumers: bool,
    /// Series per pool backend (attempts, ejections, health checks, state, in flight, buckets).
    pub backends: bool,
}

impl MetricsConfig {
    /// The defaults: summary per deployment, consumers and backends on.
    pub fn standard() -> MetricsConfig {
        MetricsConfig { consumers: true, backends: true, ..MetricsConfig::default() }
    }

    /// The detail of the deployment called `name`.
    pub fn detail_of(&self, name: &str) -> DeploymentDetail {
        if self.full_detail.contains(name) { DeploymentDetail::Full } else { self.deployments }
    }
}

fn on_off(value: Option<&Spanned<String>>, field: &str, at: &Locator<'_>) -> Result<bool, ConfigError> {
    match value.map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "on")) => Ok(true),
        Some((_, "off")) => Ok(false),
        Some((v, other)) => Err(at.error(v, field, format!("unknown value '{other}': use \"on\" or \"off\""))),
    }
}

pub(super) fn validate_metrics(raw: Option<&RawMetrics>, at: &Locator<'_>) -> Result<MetricsConfig, ConfigError> {
    let Some(raw) = raw else { return Ok(MetricsConfig::standard()) };
    let deployments = match &raw.deployments {
        None => DeploymentDetail::default(),
        Some(v) => DeploymentDetail::parse(v.get_ref()).ok_or_else(|| {
            at.error(
                v,
                "metrics.deployments",
                format!("unknown detail '{}': use \"off\", \"summary\" or \"full\"", v.get_ref()),
            )
        })?,
    };
    let mut full_detail = HashSet::new();
    for name in raw.full_detail.iter().flatten() {
        if !full_detail.insert(name.get_ref().clone()) {
            return Err(at.error(name, "metrics.full_detail", format!("'{}' is listed twice", name.get_ref())));
        }
    }
    Ok(MetricsConfig {
        deployments,
        full_detail,
        consumers: on_off(raw.consumers.as_ref(), "metrics.consumers", at)?,
        backends: on_off(raw.backends.as_ref(), "metrics.backends", at)?,
    })
}
