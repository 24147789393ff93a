//! The `tollgate bench` command line: flags into [`BenchOptions`], the run, and what it writes
//! (`--json`, `--csv`, `--html`), and `tollgate bench compare A.json B.json`.

use std::path::PathBuf;

use bytes::Bytes;

use super::workload::{self, Dist, Mix, Prompts, Shape};
use super::{BenchOptions, Load, Slo, parse_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// `--concurrency` requests in flight, each sent when the last one finished.
    Closed,
    /// `--rate` requests per second on a fixed schedule.
    Constant,
    /// `--rate` requests per second on average, at exponential gaps (seeded by `--seed`).
    Poisson,
    /// At the `timestamp`s of the `--replay` file.
    Trace,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Root URL of the endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, required = true)]
    pub url: Option<String>,
    /// Sent as `api-key` and `Authorization: Bearer`.
    #[arg(long)]
    pub key: Option<String>,
    /// Call /openai/deployments/{deployment}/... instead of the root routes.
    #[arg(long)]
    pub deployment: Option<String>,
    /// An extra header on every request, `name: value` (repeatable), e.g.
    /// `--header "x-ms-max-wait-ms: 5000"`.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Built-in request mix.
    #[arg(long, value_enum, default_value_t = Mix::ShortChat)]
    pub mix: Mix,
    /// Send this JSON body (file) instead of the mix's.
    #[arg(long, conflicts_with = "replay")]
    pub body: Option<PathBuf>,
    /// Send the bodies of this JSONL file in turn: one body per line, or
    /// {"timestamp": seconds, "body": {...}} for a trace (replayed with --arrivals trace).
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Synthetic prompts of this many tokens (cl100k, as tollgate counts): 512,
    /// uniform:128-1024 or normal:512,128.
    #[arg(long)]
    pub prompt_tokens: Option<String>,
    /// max_tokens of each chat request: 256, uniform:16-512 or normal:256,64.
    #[arg(long)]
    pub max_tokens: Option<String>,
    /// The share of chat requests streamed, 0 to 1 (streamed ones ask for usage).
    #[arg(long)]
    pub stream_share: Option<f64>,
    /// How requests arrive (default: constant with --rate, trace for a timed --replay, else closed).
    #[arg(long, value_enum)]
    pub arrivals: Option<Arrivals>,
    /// Closed loop: this many requests in flight (default 16).
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: requests per second (latency from the scheduled time).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run each of these rates (or concurrencies, for a closed loop) in turn, e.g. 5,10,20,40,
    /// until the target falls behind or misses the SLO; reports the knee.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Seeds Poisson arrivals and synthetic prompts (the same seed repeats a run's workload).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to send (each sweep step): 30s, 500ms, 2m. Default 10s, or without end for
    /// --requests or a trace.
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Requests started in this first stretch are sent but not measured.
    #[arg(long, default_value = "0s")]
    pub warmup: String,
    /// Requests started in this last stretch are sent but not measured.
    #[arg(long, default_value = "0s")]
    pub cooldown: String,
    /// A request without its full answer by then is a transport error.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// On 429, wait retry-after-ms and try again (the wait is reported on its own).
    #[arg(long)]
    pub retry_429: bool,
    /// Goodput counts requests within these bounds: ttft=200ms,itl=50ms,tpot=60ms,e2e=5s.
    #[arg(long)]
    pub slo: Option<String>,
    /// The percentage of requests that must meet the SLO for a sweep step to pass.
    #[arg(long, default_value_t = 95.0)]
    pub slo_attainment: f64,
    /// The report as JSON on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
    /// Write one row per request to this CSV file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write a self-contained HTML page of charts to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Two `--json` reports side by side, with the change from A to B.
    Compare { a: PathBuf, b: PathBuf },
}

/// Runs the command; returns what goes to stdout.
pub async fn run(args: BenchArgs, terminal: bool) -> Result<String, String> {
    if let Some(BenchCommand::Compare { a, b }) = &args.command {
        return Ok(super::compare::table(&super::compare::load(a)?, &super::compare::load(b)?));
    }
    let options = options(&args)?;
    let run = super::run(options, terminal && !args.json).await?;
    if let Some(path) = &args.csv {
        super::csv::write(path, &run.samples)?;
    }
    if let Some(path) = &args.html {
        super::html::write(path, &run)?;
    }
    if args.json {
        serde_json::to_string_pretty(&run.report).map(|s| s + "\n").map_err(|e| format!("the report as JSON: {e}"))
    } else {
        Ok(run.report.table())
    }
}

pub fn options(args: &BenchArgs) -> Result<BenchOptions, String> {
    let url = args.url.clone().ok_or("--url is required")?;
    let read = |flag: &str, path: &PathBuf| std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()));
    let prompts = match (&args.body, &args.replay) {
        (Some(path), _) => Prompts::Body(Bytes::from(read("--body", path)?)),
        (None, Some(path)) => {
            let text = String::from_utf8(read("--replay", path)?).map_err(|_| "--replay: the file is not UTF-8")?;
            Prompts::Replay(workload::parse_replay(&text)?)
        }
        (None, None) => Prompts::Mix(args.mix),
    };
    let dist = |flag: &str, text: &Option<String>| {
        text.as_deref().map(Dist::parse).transpose().map_err(|e| format!("{flag} {e}"))
    };
    let shape = Shape {
        prompt_tokens: dist("--prompt-tokens", &args.prompt_tokens)?,
        max_tokens: dist("--max-tokens", &args.max_tokens)?,
        stream_share: args.stream_share,
    };
    let sweep: Vec<f64> = match &args.sweep {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|v| v.trim().parse::<f64>().map_err(|_| format!("--sweep '{list}': write rates like 5,10,20,40")))
            .collect::<Result<_, _>>()?,
    };
    let timed = matches!(&prompts, Prompts::Replay(lines) if lines.iter().all(|l| l.at.is_some()));
    let first = sweep.first().copied();
    let arrivals = match args.arrivals {
        Some(a) => a,
        None if args.rate.is_some() => Arrivals::Constant,
        None if timed && args.concurrency.is_none() && sweep.is_empty() => Arrivals::Trace,
        None => Arrivals::Closed,
    };
    let rate = || {
        args.rate.or(first).ok_or_else(|| format!("--arrivals {arrivals:?} needs --rate (or --sweep)").to_lowercase())
    };
    let load = match arrivals {
        Arrivals::Closed if args.rate.is_some() => {
            return Err("--rate makes an open loop: drop --arrivals closed".into());
        }
        Arrivals::Closed => Load::Closed { concurrency: args.concurrency.or(first.map(|v| v as usize)).unwrap_or(16) },
        _ if args.concurrency.is_some() => {
            return Err("--concurrency is for a closed loop; an open loop takes --rate".into());
        }
        Arrivals::Constant => Load::Constant { rate: rate()? },
        Arrivals::Poisson => Load::Poisson { rate: rate()? },
        Arrivals::Trace => Load::Trace,
    };
    let time = |flag: &str, text: &str| parse_duration(text).map_err(|e| format!("{flag} {e}"));
    let duration = match &args.duration {
        Some(text) => Some(time("--duration", text)?),
        None if args.requests.is_some() || load == Load::Trace => None,
        None => Some(std::time::Duration::from_secs(10)),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let bad = |why: &str| format!("--header '{h}': {why}; write it like \"x-ms-max-wait-ms: 5000\"");
            let (name, value) = h.split_once(':').ok_or_else(|| bad("no ':' between the name and the value"))?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("not a header name"))?;
            let value = http::HeaderValue::from_str(value.trim()).map_err(|_| bad("not a header value"))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(BenchOptions {
        url,
        key: args.key.clone(),
        headers,
        deployment: args.deployment.clone(),
        prompts,
        shape,
        load,
        seed: args.seed,
        duration,
        requests: args.requests,
        warmup: time("--warmup", &args.warmup)?,
        cooldown: time("--cooldown", &args.cooldown)?,
        retry_429: args.retry_429,
        timeout: time("--timeout", &args.timeout)?,
        slo: args.slo.as_deref().map(Slo::parse).transpose()?,
        slo_attainment: args.slo_attainment,
        sweep,
    })
}
