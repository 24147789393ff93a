//! `tollgate usage`: sums a ledger (and its rotated files) per deployment, day or key and meter,
//! the way a cost view does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

use super::line::LedgerLine;
use crate::core::billing::{Meter, Micros};
use crate::core::quota::period::Stamp;

/// How to group the sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Deployment,
    Day,
    Key,
    /// `project/name` of the consumer; `-` for the deployments' own keys.
    Consumer,
    /// The deployment's project (which pays), and also the consumer's when it is another (a
    /// connection): such a request shows under both, so the projects' rows add up to more than
    /// the ledger's total. `-` for lines written before the ledger named projects.
    Project,
    /// `project/subscription` of the deployment; `-` for deployments that need none.
    Subscription,
    /// The billing meters: each request adds its input tokens and their cost to `input` and its
    /// output tokens and theirs to `output`.
    Meter,
}

impl GroupBy {
    fn heading(self) -> &'static str {
        match self {
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Key => "key",
            GroupBy::Consumer => "consumer",
            GroupBy::Project => "project",
            GroupBy::Subscription => "subscription",
            GroupBy::Meter => "billing_meter",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// What they cost, in micro-units of the report's currency (the lines' own costs, added).
    pub cost_input_micros: u64,
    pub cost_output_micros: u64,
    pub cost_micros: u64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_input_micros += other.cost_input_micros;
        self.cost_output_micros += other.cost_output_micros;
        self.cost_micros += other.cost_micros;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// (group, meter) → sums.
    pub rows: BTreeMap<(String, String), Sums>,
    pub files: Vec<PathBuf>,
    pub malformed_lines: u64,
    /// The currencies the lines' costs were in (one, unless `[billing]` changed).
    pub currencies: std::collections::BTreeSet<String>,
    /// Every line read, once (rows may hold a line twice: `--by meter`, `--by project`).
    pub all: Sums,
}

/// Unix seconds as the ledger writes times (RFC 3339, UTC).
pub fn format_unix(unix_seconds: u64) -> String {
    super::line::format_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds))
}

/// Parses `--since` / `--until`: RFC 3339, or a day `YYYY-MM-DD` (its midnight, UTC).
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, &format)
        .map(|d| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc())
        .map_err(|_| format!("'{text}' is not a time: write RFC 3339 (2026-11-29T12:00:00Z) or a day (2026-11-29)"))
}

/// The ledger file and its rotated siblings (`PATH.*`), oldest first.
pub fn ledger_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}."))))
        .collect();
    rotated.sort();
    if path.exists() {
        rotated.push(path.to_owned());
    }
    Ok(rotated)
}

/// Sums the ledger between `since` (inclusive) and `until` (exclusive).
pub fn summarize(
    path: &Path,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    by: GroupBy,
) -> std::io::Result<Report> {
    summarize_where(path, since, until, by, &|_| true)
}

/// [`summarize`] over the lines `keep` accepts.
pub fn summarize_where(
    path: &Path,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    by: GroupBy,
    keep: &dyn Fn(&LedgerLine<'_>) -> bool,
) -> std::io::Result<Report> {
    let mut report = Report { files: ledger_files(path)?, ..Report::default() };
    if report.files.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no ledger at {}", path.display())));
    }
    for file in report.files.clone() {
        for line in BufReader::new(std::fs::File::open(&file)?).lines() {
            let line = line?;
            let Ok(record) = LedgerLine::parse(&line) else {
                report.malformed_lines += 1;
                continue;
            };
            let Ok(at) = OffsetDateTime::parse(&record.time, &Rfc3339) else {
                report.malformed_lines += 1;
                continue;
            };
            if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) || !keep(&record) {
                continue;
            }
            if let Some(currency) = record.currency.as_deref().filter(|c| !report.currencies.contains(*c)) {
                report.currencies.insert(currency.to_owned());
            }
            let cost = record.cost_micros.unwrap_or_default();
            let sums = Sums {
                requests: 1,
                prompt_tokens: record.prompt_tokens,
                completion_tokens: record.completion_tokens,
                total_tokens: record.total_tokens,
                cost_input_micros: cost.input,
                cost_output_micros: cost.output,
                cost_micros: cost.total,
            };
            report.all.add(&sums);
            let meter = record.meter.to_string();
            let mut add = |group: String, sums: &Sums| report.rows.entry((group, meter.clone())).or_default().add(sums);
            match by {
                GroupBy::Deployment => add(record.deployment.to_string(), &sums),
                GroupBy::Day => add(record.day().to_owned(), &sums),
                GroupBy::Key => add(format!("{}/{}", record.deployment, record.key_slot), &sums),
                GroupBy::Consumer => add(record.consumer.as_deref().unwrap_or("-").to_owned(), &sums),
                GroupBy::Project => {
                    let paying = record.project.as_deref().unwrap_or("-");
                    add(paying.to_owned(), &sums);
                    let calling = record.consumer.as_deref().and_then(|c| c.split_once('/')).map(|(p, _)| p);
                    if let Some(calling) = calling.filter(|p| *p != paying) {
                        add(calling.to_owned(), &sums);
                    }
                }
                GroupBy::Subscription => match (&record.project, &record.subscription) {
                    (Some(project), Some(subscription)) => add(format!("{project}/{subscription}"), &sums),
                    _ => add("-".to_owned(), &sums),
                },
                GroupBy::Meter => {
                    let input = Sums {
                        requests: 1,
                        prompt_tokens: sums.prompt_tokens,
                        total_tokens: sums.prompt_tokens,
                        cost_input_micros: sums.cost_input_micros,
                        cost_micros: sums.cost_input_micros,
                        ..Sums::default()
                    };
                    let output = Sums {
                        requests: 1,
                        completion_tokens: sums.completion_tokens,
                        total_tokens: sums.completion_tokens,
                        cost_output_micros: sums.cost_output_micros,
                        cost_micros: sums.cost_output_micros,
                        ..Sums::default()
                    };
                    add(Meter::Input.as_str().to_owned(), &input);
                    add(Meter::Output.as_str().to_owned(), &output);
                }
            }
        }
    }
    Ok(report)
}

impl Report {
    /// The currency of the costs: `-` when no line had a cost, `A+B` when they were in several.
    pub fn currency(&self) -> String {
        if self.currencies.is_empty() {
            return "-".to_owned();
        }
        self.currencies.iter().cloned().collect::<Vec<_>>().join("+")
    }

    /// Every line read, once.
    pub fn total(&self) -> Sums {
        self.all.clone()
    }

    /// A text table; `cost` adds the cost columns (in the currency, six decimals).
    pub fn table(&self, by: GroupBy, cost: bool) -> String {
        let heading = by.heading();
        let width = self.rows.keys().map(|(g, _)| g.len()).max().unwrap_or(0).max(heading.len()).max(5);
        let line = |group: &str, meter: &str, s: &Sums| {
            let mut out = format!(
                "{group:<width$}  {meter:<10} {:>10} {:>14} {:>17} {:>14}",
                s.requests, s.prompt_tokens, s.completion_tokens, s.total_tokens
            );
            if cost {
                let money = |m: u64| Micros(m).to_string();
                out.push_str(&format!(
                    " {:>16} {:>16} {:>16}",
                    money(s.cost_input_micros),
                    money(s.cost_output_micros),
                    money(s.cost_micros)
                ));
            }
            out.push('\n');
            out
        };
        let mut out = format!(
            "{heading:<width$}  {:<10} {:>10} {:>14} {:>17} {:>14}",
            "meter", "requests", "prompt_tokens", "completion_tokens", "total_tokens"
        );
        if cost {
            let currency = self.currency();
            out.push_str(&format!(
                " {:>16} {:>16} {:>16}",
                format!("input ({currency})"),
                format!("output ({currency})"),
                format!("cost ({currency})")
            ));
        }
        out.push('\n');
        for ((group, meter), s) in &self.rows {
            out.push_str(&line(group, meter, s));
        }
        out.push_str(&line("total", "", &self.total()));
        if cost && self.currencies.len() > 1 {
            out.push_str("warning: the costs are in several currencies ([billing] changed): read them per period\n");
        }
        out
    }

    /// Rows with their sums and costs (micro-units, and as text in the currency).
    pub fn json(&self, by: GroupBy) -> serde_json::Value {
        let key = by.heading();
        let row = |s: &Sums| {
            serde_json::json!({"requests": s.requests, "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens, "total_tokens": s.total_tokens,
                "cost_micros": {"input": s.cost_input_micros, "output": s.cost_output_micros, "total": s.cost_micros},
                "cost": Micros(s.cost_micros).to_string()})
        };
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|((group, meter), s)| {
                let mut value = row(s);
                value[key] = group.as_str().into();
                value["meter"] = meter.as_str().into();
                value
            })
            .collect();
        serde_json::json!({"rows": rows, "total": row(&self.total()), "currency": self.currency(),
            "files": self.files, "malformed_lines": self.malformed_lines})
    }
}

/// A consumer's usage on one deployment in the current periods, rebuilt from the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodSums {
    pub day_tokens: u64,
    pub month_tokens: u64,
    pub day_requests: u64,
}

/// What consumers used in the UTC day and month of `now_unix`, by (`project/name`, deployment),
/// from the ledger and its rotated files (those last written before the month began are not
/// read). A request counts in the period it arrived in (its line's `time`), as it was counted
/// live; its requests count when it was admitted.
pub fn consumer_period_usage(
    path: &Path,
    now_unix: u64,
) -> std::io::Result<std::collections::HashMap<(String, String), PeriodSums>> {
    let mut sums: std::collections::HashMap<(String, String), PeriodSums> = std::collections::HashMap::new();
    this_months_lines(path, now_unix, |record, today| {
        let Some(consumer) = &record.consumer else { return };
        let entry = sums.entry((consumer.to_string(), record.deployment.to_string())).or_default();
        entry.month_tokens += record.total_tokens;
        if today {
            entry.day_tokens += record.total_tokens;
            entry.day_requests += u64::from(record.admitted == Some(true));
        }
    })?;
    Ok(sums)
}

/// What was spent in the current UTC day and month (of `now_unix`), by budget scope label
/// (`project:<p>`, `subscription:<p>/<s>`, `consumer:<p>/<c>`): micro-units (day, month), from
/// the lines' own costs, each counted in the periods it arrived in.
pub fn budget_spend(path: &Path, now_unix: u64) -> std::io::Result<std::collections::HashMap<String, (u64, u64)>> {
    let mut sums: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    this_months_lines(path, now_unix, |record, today| {
        let Some(cost) = record.cost_micros.filter(|c| c.total > 0) else { return };
        let mut add = |scope: String| {
            let entry = sums.entry(scope).or_default();
            entry.0 += u64::from(today) * cost.total;
            entry.1 += cost.total;
        };
        if let Some(project) = &record.project {
            add(format!("project:{project}"));
            if let Some(subscription) = &record.subscription {
                add(format!("subscription:{project}/{subscription}"));
            }
        }
        if let Some(consumer) = &record.consumer {
            add(format!("consumer:{consumer}"));
        }
    })?;
    Ok(sums)
}

/// Calls `each` with every line of the ledger that arrived in the UTC month of `now_unix`, and
/// whether it arrived on that day too (files last written before the month began are skipped).
fn this_months_lines(path: &Path, now_unix: u64, mut each: impl FnMut(&LedgerLine<'_>, bool)) -> std::io::Result<()> {
    let stamp = Stamp::at(now_unix);
    let month_start = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(stamp.month_start());
    for file in ledger_files(path)? {
        if std::fs::metadata(&file).and_then(|m| m.modified()).is_ok_and(|at| at < month_start) {
            continue;
        }
        for line in BufReader::new(std::fs::File::open(&file)?).lines() {
            let line = line?;
            let Ok(record) = LedgerLine::parse(&line) else { continue };
            let Ok(at) = OffsetDateTime::parse(&record.time, &Rfc3339) else { continue };
            let at = Stamp::at(u64::try_from(at.unix_timestamp()).unwrap_or(0));
            if at.month == stamp.month {
                each(&record, at.day == stamp.day);
            }
        }
    }
    Ok(())
}
