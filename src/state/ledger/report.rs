//! `tollgate usage`: sums a ledger (and its rotated files) per deployment, day or key and meter,
//! the way a cost view does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};

use super::line::LedgerLine;
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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// (group, meter) → sums.
    pub rows: BTreeMap<(String, String), Sums>,
    pub files: Vec<PathBuf>,
    pub malformed_lines: u64,
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
            if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) {
                continue;
            }
            let mut also = None;
            let group = match by {
                GroupBy::Deployment => record.deployment.to_string(),
                GroupBy::Day => record.day().to_owned(),
                GroupBy::Key => format!("{}/{}", record.deployment, record.key_slot),
                GroupBy::Consumer => record.consumer.as_deref().unwrap_or("-").to_owned(),
                GroupBy::Project => {
                    let paying = record.project.as_deref().unwrap_or("-");
                    let calling = record.consumer.as_deref().and_then(|c| c.split_once('/')).map(|(p, _)| p);
                    also = calling.filter(|p| *p != paying).map(str::to_owned);
                    paying.to_owned()
                }
            };
            for group in std::iter::once(group).chain(also) {
                let sums = report.rows.entry((group, record.meter.to_string())).or_default();
                sums.requests += 1;
                sums.prompt_tokens += record.prompt_tokens;
                sums.completion_tokens += record.completion_tokens;
                sums.total_tokens += record.total_tokens;
            }
        }
    }
    Ok(report)
}

impl Report {
    pub fn table(&self, by: GroupBy) -> String {
        let heading = match by {
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Key => "deployment/key",
            GroupBy::Consumer => "consumer",
            GroupBy::Project => "project",
        };
        let width = self.rows.keys().map(|(g, _)| g.len()).max().unwrap_or(0).max(heading.len());
        let mut out = format!(
            "{heading:<width$}  {:<10} {:>10} {:>14} {:>17} {:>14}\n",
            "meter", "requests", "prompt_tokens", "completion_tokens", "total_tokens"
        );
        let mut all = Sums::default();
        for ((group, meter), s) in &self.rows {
            out.push_str(&format!(
                "{group:<width$}  {meter:<10} {:>10} {:>14} {:>17} {:>14}\n",
                s.requests, s.prompt_tokens, s.completion_tokens, s.total_tokens
            ));
            all.requests += s.requests;
            all.prompt_tokens += s.prompt_tokens;
            all.completion_tokens += s.completion_tokens;
            all.total_tokens += s.total_tokens;
        }
        out.push_str(&format!(
            "{:<width$}  {:<10} {:>10} {:>14} {:>17} {:>14}\n",
            "total", "", all.requests, all.prompt_tokens, all.completion_tokens, all.total_tokens
        ));
        out
    }

    pub fn json(&self, by: GroupBy) -> serde_json::Value {
        let key = match by {
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Key => "key",
            GroupBy::Consumer => "consumer",
            GroupBy::Project => "project",
        };
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|((group, meter), s)| {
                serde_json::json!({key: group, "meter": meter, "requests": s.requests, "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens, "total_tokens": s.total_tokens})
            })
            .collect();
        serde_json::json!({"rows": rows, "files": self.files, "malformed_lines": self.malformed_lines})
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
    let stamp = Stamp::at(now_unix);
    let month_start = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(stamp.month_start());
    let mut sums: std::collections::HashMap<(String, String), PeriodSums> = std::collections::HashMap::new();
    for file in ledger_files(path)? {
        if std::fs::metadata(&file).and_then(|m| m.modified()).is_ok_and(|at| at < month_start) {
            continue;
        }
        for line in BufReader::new(std::fs::File::open(&file)?).lines() {
            let line = line?;
            let Ok(record) = LedgerLine::parse(&line) else { continue };
            let Some(consumer) = &record.consumer else { continue };
            let Ok(at) = OffsetDateTime::parse(&record.time, &Rfc3339) else { continue };
            let at = Stamp::at(u64::try_from(at.unix_timestamp()).unwrap_or(0));
            if at.month != stamp.month {
                continue;
            }
            let entry = sums.entry((consumer.to_string(), record.deployment.to_string())).or_default();
            entry.month_tokens += record.total_tokens;
            if at.day == stamp.day {
                entry.day_tokens += record.total_tokens;
                entry.day_requests += u64::from(record.admitted == Some(true));
            }
        }
    }
    Ok(sums)
}
