//! `[billing]` and `prices`: the gateway's one currency and what each model's tokens cost.

use toml::Spanned;

use std::time::Duration;

use super::raw::{RawAmount, RawBilling, RawBudget, RawPrices};
use super::{ConfigError, Locator};
use crate::core::billing::{Micros, Prices};
use crate::core::secret::Secret;

/// The currency of every price and cost when `[billing]` names none.
pub const DEFAULT_CURRENCY: &str = "USD";

/// Budget thresholds when a budget names none (percent of its amount).
pub const DEFAULT_THRESHOLDS: [u16; 3] = [50, 80, 100];
/// Most budgets one gateway holds (each is a metric label).
pub const MAX_BUDGETS: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingConfig {
    /// An ISO 4217 code (`USD`, `EUR`): a label on costs, never converted.
    pub currency: String,
    pub budgets: Vec<BudgetConfig>,
    /// Where threshold crossings are sent, when set.
    pub webhook: Option<WebhookConfig>,
}

impl Default for BillingConfig {
    fn default() -> BillingConfig {
        BillingConfig { currency: DEFAULT_CURRENCY.to_owned(), budgets: Vec::new(), webhook: None }
    }
}

/// What a budget watches: a project's deployments, a subscription's, or a consumer's requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    Project(String),
    Subscription {
        project: String,
        name: String,
    },
    /// `project/name`.
    Consumer(String),
}

impl BudgetScope {
    /// `project:<p>`, `subscription:<p>/<s>` or `consumer:<p>/<c>`.
    pub fn label(&self) -> String {
        match self {
            BudgetScope::Project(p) => format!("project:{p}"),
            BudgetScope::Subscription { project, name } => format!("subscription:{project}/{name}"),
            BudgetScope::Consumer(c) => format!("consumer:{c}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    pub name: String,
    pub scope: BudgetScope,
    /// Amounts per UTC calendar day and month (at least one).
    pub daily: Option<Micros>,
    pub monthly: Option<Micros>,
    /// Percentages, ascending, without repeats.
    pub thresholds: Vec<u16>,
    pub hard: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The HMAC-SHA256 key of the `x-tollgate-signature` header.
    pub secret: Secret,
    pub attempts: u32,
    pub first_retry: Duration,
}

pub(super) fn validate_billing(
    raw: Option<&RawBilling>,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BillingConfig, ConfigError> {
    let Some(raw) = raw else { return Ok(BillingConfig::default()) };
    let currency = match &raw.currency {
        None => DEFAULT_CURRENCY.to_owned(),
        Some(currency) => {
            let code = currency.get_ref();
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(at.error(
                    currency,
                    "billing.currency",
                    format!("'{code}' is not a currency code: write three capital letters (ISO 4217), e.g. \"USD\" or \"EUR\""),
                ));
            }
            code.clone()
        }
    };
    if let Some(extra) = raw.budgets.get(MAX_BUDGETS) {
        return Err(at.error(
            extra,
            format!("billing.budgets[{MAX_BUDGETS}]"),
            format!("at most {MAX_BUDGETS} budgets"),
        ));
    }
    let mut budgets: Vec<BudgetConfig> = Vec::with_capacity(raw.budgets.len());
    for (index, spanned) in raw.budgets.iter().enumerate() {
        let budget = validate_budget(spanned.get_ref(), index, at)?;
        if budgets.iter().any(|b| b.name == budget.name) {
            return Err(at.error(
                &spanned.get_ref().name,
                format!("billing.budgets[{index}].name"),
                format!("budget '{}' is declared twice; names are unique", budget.name),
            ));
        }
        budgets.push(budget);
    }
    let webhook = match &raw.webhook_url {
        None => None,
        Some(url) => Some(validate_webhook(raw, url, at, env)?),
    };
    Ok(BillingConfig { currency, budgets, webhook })
}

fn validate_webhook(
    raw: &RawBilling,
    url: &Spanned<String>,
    at: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<WebhookConfig, ConfigError> {
    let text = url.get_ref();
    if !(text.starts_with("http://") || text.starts_with("https://")) || text.parse::<http::Uri>().is_err() {
        return Err(at.error(
            url,
            "billing.webhook_url",
            "must be an http:// or https:// URL, e.g. \"https://hooks.example.com/tollgate\"",
        ));
    }
    let var = raw.webhook_secret_env.as_ref().ok_or_else(|| {
        at.error(
            url,
            "billing.webhook_secret_env",
            "webhooks are signed: name the environment variable holding the signing key",
        )
    })?;
    let secret = env(var.get_ref()).filter(|v| !v.is_empty()).ok_or_else(|| {
        at.error(
            var,
            "billing.webhook_secret_env",
            format!(
                "environment variable '{}' is not set (or empty); export it with the webhook signing key",
                var.get_ref()
            ),
        )
    })?;
    let attempts = match &raw.webhook_attempts {
        None => 8,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 100 => {
            return Err(at.error(v, "billing.webhook_attempts", "must be between 1 and 100"));
        }
        Some(v) => *v.get_ref() as u32,
    };
    let first_retry = match &raw.webhook_retry_ms {
        None => Duration::from_secs(1),
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > 3_600_000 => {
            return Err(at.error(v, "billing.webhook_retry_ms", "must be between 1 and 3600000 milliseconds"));
        }
        Some(v) => Duration::from_millis(*v.get_ref()),
    };
    Ok(WebhookConfig { url: text.clone(), secret: Secret::new(secret), attempts, first_retry })
}

fn validate_budget(b: &RawBudget, index: usize, at: &Locator<'_>) -> Result<BudgetConfig, ConfigError> {
    let field = |name: &str| format!("billing.budgets[{index}].{name}");
    let name = b.name.get_ref();
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(at.error(&b.name, field("name"), "1 to 64 letters, digits, '-' or '_'"));
    }
    let pair = |value: &Spanned<String>, what: &str| -> Result<(String, String), ConfigError> {
        let text = value.get_ref();
        match text.split_once('/') {
            Some((p, n)) if !p.is_empty() && !n.is_empty() && !n.contains('/') => Ok((p.to_owned(), n.to_owned())),
            _ => Err(at.error(value, field(what), format!("write it as \"project/{what}\", e.g. \"team-a/main\""))),
        }
    };
    let scope = match (&b.project, &b.subscription, &b.consumer) {
        (Some(p), None, None) => BudgetScope::Project(p.get_ref().clone()),
        (None, Some(s), None) => {
            let (project, name) = pair(s, "subscription")?;
            BudgetScope::Subscription { project, name }
        }
        (None, None, Some(c)) => {
            let (project, name) = pair(c, "consumer")?;
            BudgetScope::Consumer(format!("{project}/{name}"))
        }
        _ => {
            return Err(at.error(
                &b.name,
                field("project"),
                "a budget watches exactly one of `project`, `subscription` (\"project/name\") or `consumer` (\"project/name\")",
            ));
        }
    };
    let money = |value: &Option<Spanned<RawAmount>>, what: &str| -> Result<Option<Micros>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let amount = amount_of(value).map_err(|why| at.error(value, field(what), why))?;
        if amount.0 == 0 {
            return Err(at.error(value, field(what), "a budget of zero: leave it out instead"));
        }
        Ok(Some(amount))
    };
    let (daily, monthly) = (money(&b.daily, "daily")?, money(&b.monthly, "monthly")?);
    if daily.is_none() && monthly.is_none() {
        return Err(at.error(&b.name, field("monthly"), "give the budget's `monthly` amount (and/or `daily`)"));
    }
    let thresholds = match &b.thresholds {
        None => DEFAULT_THRESHOLDS.to_vec(),
        Some(list) => {
            let mut out: Vec<u16> = Vec::with_capacity(list.get_ref().len());
            for t in list.get_ref() {
                if *t == 0 || *t > 1000 || out.last().is_some_and(|last| u64::from(*last) >= *t) {
                    return Err(at.error(
                        list,
                        field("thresholds"),
                        "percentages from 1 to 1000, ascending, e.g. [50, 80, 100]",
                    ));
                }
                out.push(*t as u16);
            }
            if out.is_empty() {
                return Err(at.error(list, field("thresholds"), "give at least one percentage, e.g. [100]"));
            }
            out
        }
    };
    Ok(BudgetConfig { name: name.clone(), scope, daily, monthly, thresholds, hard: b.hard })
}

/// An amount as written (a string, an integer or a float by its shortest decimal form).
fn amount_of(value: &Spanned<RawAmount>) -> Result<Micros, String> {
    let text = match value.get_ref() {
        RawAmount::Text(text) => text.clone(),
        RawAmount::Whole(n) => n.to_string(),
        RawAmount::Float(f) => f.to_string(),
    };
    Micros::parse(&text)
}

/// `prices = { input = "0.30", output = "0.61" }` (per 1,000,000 tokens) of the table `table`.
pub(super) fn validate_prices(
    raw: Option<&Spanned<RawPrices>>,
    at: &Locator<'_>,
    table: &str,
) -> Result<Option<Prices>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let amount = |value: &Spanned<RawAmount>, meter: &str| {
        amount_of(value).map_err(|why| {
            at.error(value, format!("{table}.prices.{meter}"), format!("{why} (the price of 1,000,000 {meter} tokens)"))
        })
    };
    let p = raw.get_ref();
    Ok(Some(Prices { input: amount(&p.input, "input")?, output: amount(&p.output, "output")? }))
}
