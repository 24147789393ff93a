//! The `tollgate` command: `serve`, `check`, `keys generate`, `mock-backend`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate::config::{BackendUrl, Config};
use tollgate::core::keys::{KeyDigest, generate_key};
use tollgate::process::bench::{self, command::BenchArgs};
use tollgate::process::embedded;
use tollgate::process::logging;
use tollgate::process::mock_backend::{MockBackend, MockOptions};
use tollgate::process::runtime::{RunningGateway, StartOptions};
use tollgate::state::ledger::report::{self, GroupBy};

/// jemalloc, with background threads that give freed memory back to the system (glibc's malloc
/// kept 1.2 GiB after a burst of 100 bodies of 16 MiB: its mmap threshold rises past them and
/// its arenas are not trimmed). Measured in BENCHMARKS.md.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Serverless-style API endpoints with keys, quotas and token metering in front of model backends"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Compact, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Compact,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (without --config: the embedded demo in front of the built-in mock backend).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the gateway listen address (e.g. 127.0.0.1:0 for any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override the admin listen address.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Validate a configuration file and exit (non-zero, naming file, line and field, when invalid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Sum a usage ledger (and its rotated files) per deployment, day, key, consumer, project,
    /// subscription or billing meter, with what it cost.
    Usage {
        #[arg(long)]
        ledger: PathBuf,
        /// Only records from this time on (RFC 3339, or a UTC day YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339, or a UTC day YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = GroupBy::Deployment)]
        by: GroupBy,
        /// JSON instead of a table (it always has the costs).
        #[arg(long)]
        json: bool,
        /// Cost columns in the table: input, output and total, in the `[billing]` currency.
        #[arg(long)]
        cost: bool,
    },
    /// Load-test an endpoint speaking the Model Inference API (tollgate or not): TTFT, ITL,
    /// tokens, goodput under an SLO, Poisson arrivals and rate sweeps; `bench compare A B`.
    Bench(Box<BenchArgs>),
    /// Endpoint keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the built-in mock backend (speaks the Model Inference API like a Llama serverless endpoint).
    MockBackend {
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: SocketAddr,
        #[arg(long, default_value = "Meta-Llama-3-8B-Instruct")]
        model_name: String,
        /// Delay before the first byte of every response.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Pace of streamed chunks (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        tokens_per_second: u32,
        /// Length of every completion, in tokens.
        #[arg(long, default_value_t = 16)]
        completion_tokens: u32,
        /// Stream without `usage` in the last chunk, as some backends do.
        #[arg(long)]
        no_stream_usage: bool,
        /// Require this environment variable's value as the key (api-key or Bearer).
        #[arg(long)]
        require_key_env: Option<String>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Its own quota, like a serverless endpoint's: past it, 429 with retry-after-ms.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        requests_per_minute: Option<u64>,
        /// Its own tokens-per-minute quota (each answer's prompt + completion tokens).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        tokens_per_minute: Option<u64>,
        /// Answer this share of requests (percent, spread evenly) with 500.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        fail_percent: u8,
        /// Work on at most this many requests at once (the rest wait), like a fixed number of
        /// replicas: with --latency-ms it caps throughput at max-concurrency / latency.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_concurrency: Option<u64>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random 32-character key and its `sha256:` form for the config file.
    Generate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it writes out the buffered log lines.
    let _log = init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    let result = match cli.command {
        Command::Serve { config, listen, admin_listen } => runtime.block_on(serve(config, listen, admin_listen)),
        Command::Check { config } => check(&config),
        Command::Bench(args) => {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            runtime.block_on(bench::command::run(*args, terminal)).and_then(|out| say(&out))
        }
        Command::Usage { ledger, since, until, by, json, cost } => {
            usage(&ledger, since.as_deref(), until.as_deref(), by, json, cost)
        }
        Command::Keys { command: KeysCommand::Generate } => {
            let key = generate_key();
            say(&format!("key:    {key}\nstored: {}\n", KeyDigest::of(key.as_bytes()).to_stored()))
        }
        Command::MockBackend {
            listen,
            model_name,
            latency_ms,
            tokens_per_second,
            completion_tokens,
            no_stream_usage,
            require_key_env,
            tls_cert,
            tls_key,
            requests_per_minute,
            tokens_per_minute,
            fail_percent,
            max_concurrency,
        } => {
            let require_key = match require_key_env.map(|var| std::env::var(&var).map_err(|_| var)) {
                None => None,
                Some(Ok(key)) => Some(key),
                Some(Err(var)) => {
                    return fail(&format!("--require-key-env: environment variable '{var}' is not set"));
                }
            };
            let options = MockOptions {
                model_name,
                latency: Duration::from_millis(latency_ms),
                tokens_per_second,
                completion_tokens,
                stream_usage: !no_stream_usage,
                require_key,
                tls: tls_cert.zip(tls_key),
                requests_per_minute,
                tokens_per_minute,
                fail_percent,
                max_concurrency: max_concurrency.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                clock: None,
            };
            runtime.block_on(mock_backend(listen, options))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "tollgate: {message}");
    ExitCode::FAILURE
}

fn say(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("cannot write to stdout: {e}"))
}

fn init_logging(format: LogFormat) -> logging::LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = match format {
        LogFormat::Compact => logging::LogFormat::Compact,
        LogFormat::Json => logging::LogFormat::Json,
    };
    logging::init(format, filter, ansi, Box::new(std::io::stderr()))
}

fn usage(
    ledger: &std::path::Path,
    since: Option<&str>,
    until: Option<&str>,
    by: GroupBy,
    json: bool,
    cost: bool,
) -> Result<(), String> {
    let since = since.map(report::parse_time).transpose().map_err(|e| format!("--since: {e}"))?;
    let until = until.map(report::parse_time).transpose().map_err(|e| format!("--until: {e}"))?;
    let report = report::summarize(ledger, since, until, by).map_err(|e| format!("cannot read the ledger: {e}"))?;
    if report.malformed_lines > 0 {
        let _ = writeln!(std::io::stderr(), "tollgate: skipped {} malformed ledger lines", report.malformed_lines);
    }
    if json { say(&format!("{}\n", report.json(by))) } else { say(&report.table(by, cost)) }
}

fn check(path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    say(&format!("{}: valid ({} deployments)\n", path.display(), config.deployments.len()))
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
) -> Result<(), String> {
    let stop = shutdown_signal();
    let (running, mock) = match config {
        Some(path) => {
            let mut config = Config::load(&path).map_err(|e| e.to_string())?;
            let file_listen = Some((config.server.listen, config.admin.listen));
            config.server.listen = listen.unwrap_or(config.server.listen);
            config.admin.listen = admin_listen.unwrap_or(config.admin.listen);
            let options = StartOptions { config_path: Some(path.clone()), file_listen, ..StartOptions::default() };
            let running = RunningGateway::start_with(&config, options).await.map_err(|e| e.to_string())?;
            let tls = running.tls_addr.map(|a| a.to_string());
            tracing::info!(
                gateway = %running.gateway_addr,
                tls = tls.as_deref().unwrap_or("-"),
                admin = %running.admin_addr,
                deployments = config.deployments.len(),
                "tollgate is serving {}", path.display()
            );
            say(&listeners_banner(&path, &running))?;
            (running, None)
        }
        None => {
            let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default())
                .await
                .map_err(|e| format!("cannot start the built-in mock backend: {e}"))?;
            let backend = BackendUrl::parse(&mock.url()).map_err(|e| format!("mock backend URL: {e}"))?;
            let key = generate_key();
            let admin_token = format!("tga_{}", generate_key());
            let listen = listen.unwrap_or(([127, 0, 0, 1], 8080).into());
            let admin_listen = admin_listen.unwrap_or(([127, 0, 0, 1], 9090).into());
            let config = embedded::demo_config(listen, admin_listen, backend, &key, &admin_token);
            let running = RunningGateway::start(&config).await.map_err(|e| e.to_string())?;
            say(&embedded::banner(running.gateway_addr, running.admin_addr, &mock.url(), &key, &admin_token))?;
            (running, Some(mock))
        }
    };
    stop.await;
    tracing::info!("shutting down: draining open connections");
    running.shutdown().await;
    if let Some(mock) = mock {
        mock.stop().await;
    }
    Ok(())
}

/// The listeners a configured gateway serves on, printed once it listens.
fn listeners_banner(path: &std::path::Path, running: &RunningGateway) -> String {
    let tls = match running.tls_addr {
        Some(addr) => format!("\n  tls:        https://{addr}"),
        None => String::new(),
    };
    format!(
        "tollgate {}: serving {}\n  gateway:    http://{}{tls}\n  admin:      http://{}\n",
        env!("CARGO_PKG_VERSION"),
        path.display(),
        running.gateway_addr,
        running.admin_addr,
    )
}

async fn mock_backend(listen: SocketAddr, options: MockOptions) -> Result<(), String> {
    let stop = shutdown_signal();
    let mock = MockBackend::start(listen, options).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    say(&format!("tollgate mock backend listening on {}\n", mock.url()))?;
    stop.await;
    mock.stop().await;
    Ok(())
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when it is first
/// awaited, so that a signal sent as soon as the banner is out is not lost (nor kills the
/// process with its default action before the drain).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate()).ok();
    let interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(terminate) => {}
            _ = wait(interrupt) => {}
        }
    }
}
