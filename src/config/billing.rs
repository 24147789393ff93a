//! `[billing]` and `prices`: the gateway's one currency and what each model's tokens cost.

use toml::Spanned;

use super::raw::{RawAmount, RawBilling, RawPrices};
use super::{ConfigError, Locator};
use crate::core::billing::{Micros, Prices};

/// The currency of every price and cost when `[billing]` names none.
pub const DEFAULT_CURRENCY: &str = "USD";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BillingConfig {
    /// An ISO 4217 code (`USD`, `EUR`): a label on costs, never converted.
    pub currency: String,
}

impl Default for BillingConfig {
    fn default() -> BillingConfig {
        BillingConfig { currency: DEFAULT_CURRENCY.to_owned() }
    }
}

pub(super) fn validate_billing(raw: Option<&RawBilling>, at: &Locator<'_>) -> Result<BillingConfig, ConfigError> {
    let Some(currency) = raw.and_then(|b| b.currency.as_ref()) else { return Ok(BillingConfig::default()) };
    let code = currency.get_ref();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(at.error(
            currency,
            "billing.currency",
            format!("'{code}' is not a currency code: write three capital letters (ISO 4217), e.g. \"USD\" or \"EUR\""),
        ));
    }
    Ok(BillingConfig { currency: code.clone() })
}

/// `prices = { input = "0.30", output = "0.61" }` (per 1,000,000 tokens) of the table `table`.
pub(super) fn validate_prices(
    raw: Option<&Spanned<RawPrices>>,
    at: &Locator<'_>,
    table: &str,
) -> Result<Option<Prices>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let amount = |value: &Spanned<RawAmount>, meter: &str| {
        let text = match value.get_ref() {
            RawAmount::Text(text) => text.clone(),
            RawAmount::Whole(n) => n.to_string(),
            RawAmount::Float(f) if f.is_finite() && *f >= 0.0 => f.to_string(),
            RawAmount::Float(f) => format!("{f}"),
        };
        Micros::parse(&text).map_err(|why| {
            at.error(value, format!("{table}.prices.{meter}"), format!("{why} (the price of 1,000,000 {meter} tokens)"))
        })
    };
    let p = raw.get_ref();
    Ok(Some(Prices { input: amount(&p.input, "input")?, output: amount(&p.output, "output")? }))
}
