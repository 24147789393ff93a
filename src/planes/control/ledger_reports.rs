//! Admin reads of the usage ledger: a deployment's or a consumer's usage, and a subscription's
//! costs (the seed's cost resource per subscription). The ledger is flushed first and read on
//! the blocking pool.

use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AdminError;
use crate::core::billing::Micros;
use crate::state::ledger::Ledger;
use crate::state::ledger::line::LedgerLine;
use crate::state::ledger::report::{self, GroupBy, Report, Sums};

/// The query of a ledger read: `since`, `until` (RFC 3339 or a UTC day) and, where `by` is
/// given the groups it may take, `by`.
struct Query {
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    by: Option<GroupBy>,
}

fn parse_query(query: &str, groups: &[(&str, GroupBy)]) -> Result<Query, AdminError> {
    let mut out = Query { since: None, until: None, by: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace("%3A", ":").replace("%3a", ":").replace("%2B", "+").replace("%2b", "+");
        let time = || report::parse_time(&value).map_err(|e| AdminError::bad_request(format!("{key}: {e}")));
        match key {
            "since" => out.since = Some(time()?),
            "until" => out.until = Some(time()?),
            "by" if !groups.is_empty() => {
                let group = groups.iter().find(|(name, _)| *name == value).ok_or_else(|| {
                    let names: Vec<&str> = groups.iter().map(|(n, _)| *n).collect();
                    AdminError::bad_request(format!("by={value} is not a grouping here: use {}", names.join(", ")))
                })?;
                out.by = Some(group.1);
            }
            other => {
                let known = if groups.is_empty() { "since and until" } else { "since, until and by" };
                return Err(AdminError::bad_request(format!("unknown query parameter '{other}': use {known}")));
            }
        }
    }
    Ok(out)
}

/// Sums the ledger's lines that `keep` accepts (none yet: an empty report).
async fn read(
    ledger: Option<&Arc<Ledger>>,
    query: &Query,
    by: GroupBy,
    keep: impl Fn(&LedgerLine<'_>) -> bool + Send + 'static,
) -> Result<Report, AdminError> {
    let ledger = ledger.ok_or_else(|| {
        AdminError::conflict("this gateway keeps no usage ledger; configure [ledger] to read usage and costs here")
    })?;
    let (ledger, since, until) = (Arc::clone(ledger), query.since, query.until);
    let report = tokio::task::spawn_blocking(move || {
        ledger.flush();
        report::summarize_where(&ledger.config.path, since, until, by, &keep)
    })
    .await
    .map_err(|e| AdminError::internal(e.to_string()))?;
    match report {
        Ok(report) => Ok(report),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Report::default()),
        Err(e) => Err(AdminError::internal(format!("cannot read the ledger: {e}"))),
    }
}

/// Token totals per meter for one deployment or consumer (`by` says which `owner` is).
pub async fn usage(ledger: Option<&Arc<Ledger>>, by: GroupBy, owner: &str, query: &str) -> Result<Value, AdminError> {
    let query = parse_query(query, &[])?;
    let name = owner.to_owned();
    let report = read(ledger, &query, by, |_| true).await?;
    let meters: Vec<Value> = report
        .rows
        .iter()
        .filter(|((group, _), _)| *group == name)
        .map(|((_, meter), s)| {
            json!({"meter": meter, "requests": s.requests, "promptTokens": s.prompt_tokens,
                   "completionTokens": s.completion_tokens, "totalTokens": s.total_tokens,
                   "costMicros": s.cost_micros})
        })
        .collect();
    let what = if by == GroupBy::Consumer { "consumer" } else { "deployment" };
    Ok(json!({what: name, "value": meters}))
}

fn cost_json(s: &Sums) -> Value {
    json!({"requests": s.requests, "inputTokens": s.prompt_tokens, "outputTokens": s.completion_tokens,
           "costMicros": {"input": s.cost_input_micros, "output": s.cost_output_micros, "total": s.cost_micros},
           "cost": Micros(s.cost_micros).to_string()})
}

/// What subscription `name` of `project` cost: its deployments' requests, grouped `by` day,
/// meter (the default), deployment or consumer, with the total per meter.
pub async fn subscription_costs(
    ledger: Option<&Arc<Ledger>>,
    project: &str,
    name: &str,
    query: &str,
) -> Result<Value, AdminError> {
    let groups = [
        ("meter", GroupBy::Meter),
        ("day", GroupBy::Day),
        ("deployment", GroupBy::Deployment),
        ("consumer", GroupBy::Consumer),
    ];
    let query = parse_query(query, &groups)?;
    let by = query.by.unwrap_or(GroupBy::Meter);
    let (p, s) = (project.to_owned(), name.to_owned());
    let report = read(ledger, &query, by, move |line| {
        line.project.as_deref() == Some(p.as_str()) && line.subscription.as_deref() == Some(s.as_str())
    })
    .await?;
    let by_name = groups.iter().find(|(_, g)| *g == by).map_or("meter", |(n, _)| *n);
    let mut rows: Vec<Value> = Vec::with_capacity(report.rows.len());
    for ((group, _), sums) in &report.rows {
        let mut row = cost_json(sums);
        row[by_name] = group.as_str().into();
        rows.push(row);
    }
    let total = report.total();
    Ok(json!({
        "id": format!("/projects/{project}/subscriptions/{name}/costs"),
        "currency": report.currency(),
        "by": by_name,
        "value": rows,
        "total": cost_json(&total),
    }))
}
