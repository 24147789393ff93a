//! `tollgate bench` against the mock backend (with known pacing, latency and capacity) and
//! through a gateway with a quota.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tollgate::core::clock::ManualClock;
use tollgate::process::bench::arrivals::exponential_chi_square;
use tollgate::process::bench::{BenchOptions, Dist, Load, Mix, Prompts, Report, Shape, Slo, run};
use tollgate::process::mock_backend::{MockBackend, MockOptions};

fn options(url: String, load: Load, requests: u64) -> BenchOptions {
    BenchOptions { requests: Some(requests), duration: None, ..BenchOptions::new(url, load) }
}

async fn report(options: BenchOptions) -> Report {
    run(options, false).await.unwrap().report
}

fn ordered(report: &Report) {
    let l = &report.latency_ms;
    assert!(l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, "{l:?}");
}

async fn mock(options: MockOptions) -> MockBackend {
    MockBackend::start(([127, 0, 0, 1], 0).into(), options).await.unwrap()
}

#[tokio::test]
async fn closed_and_open_loops_count_every_request() {
    let mock = mock(MockOptions::default()).await;
    let closed = report(options(mock.url(), Load::Closed { concurrency: 8 }, 300)).await;
    assert_eq!(
        (closed.requests_sent, closed.requests_measured, closed.status_2xx, closed.transport_errors),
        (300, 300, 300, 0)
    );
    assert!(closed.throughput_per_second > 0.0);
    ordered(&closed);
    assert!(closed.time_to_first_token_ms.is_none());
    // Token counts come from each answer's usage: the mock answers 16 tokens.
    assert_eq!(closed.output_tokens.as_ref().map(|s| (s.count, s.p50, s.max)), Some((300, 16.0, 16.0)));
    assert!(closed.input_tokens.as_ref().is_some_and(|s| s.p50 > 0.0));
    assert!(closed.output_tokens_per_second > 0.0);

    let open = report(options(mock.url(), Load::Constant { rate: 400.0 }, 100)).await;
    assert_eq!((open.requests_sent, open.status_2xx), (100, 100));
    assert!(open.mode.contains("constant rate"));
    ordered(&open);

    let mut streamed = options(mock.url(), Load::Closed { concurrency: 4 }, 40);
    streamed.prompts = Prompts::Mix(Mix::StreamChat);
    let streamed = report(streamed).await;
    assert_eq!(streamed.status_2xx, 40);
    let ttft = streamed.time_to_first_token_ms.expect("time to first token");
    assert!(ttft.p50 > 0.0 && ttft.p50 <= streamed.latency_ms.max);
    assert_eq!(streamed.output_tokens.map(|s| s.p50), Some(16.0));

    let mut embeddings = options(mock.url(), Load::Closed { concurrency: 2 }, 20);
    embeddings.prompts = Prompts::Mix(Mix::Embeddings);
    assert_eq!(report(embeddings).await.status_2xx, 20);
}

/// The mock waits 100 ms, sends the role event, then one token every 50 ms (20/s) and, 50 ms
/// after the last, the usage chunk. So TTFT is 150 ms and ITL 50 ms per token, and time per
/// output token (which counts to the end of the body) is a third more for a 4-token answer.
#[tokio::test]
async fn ttft_itl_and_tokens_per_second_match_the_mocks_pacing() {
    let paced = MockOptions {
        latency: Duration::from_millis(100),
        tokens_per_second: 20,
        completion_tokens: 4,
        ..MockOptions::default()
    };
    let mock = mock(paced).await;
    let mut streamed = options(mock.url(), Load::Closed { concurrency: 4 }, 16);
    // A tab and a newline after "stream": is still a stream (the body is parsed, not grepped).
    streamed.prompts = Prompts::Body(Bytes::from_static(
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":64,\"stream\":\t\ntrue}",
    ));
    let r = report(streamed).await;
    assert_eq!(r.status_2xx, 16, "{r:?}");
    let ttft = r.time_to_first_token_ms.expect("TTFT of a tab-separated stream");
    assert!((140.0..=220.0).contains(&ttft.p50), "TTFT {ttft:?}");
    // Tokens from usage, not events.
    assert_eq!(r.output_tokens.as_ref().map(|s| (s.p50, s.max)), Some((4.0, 4.0)));
    let itl = r.inter_token_latency_ms.expect("ITL");
    assert!((48.0..=58.0).contains(&itl.p50), "ITL per token {itl:?}");
    let events = r.inter_event_latency_ms.expect("ITL between events");
    assert_eq!(events.count, 16 * 3, "three gaps between four content events");
    assert!((48.0..=58.0).contains(&events.p50), "{events:?}");
    // The old reading divided by the time to the end of the body: 3 / 200 ms = 15/s.
    let pace = r.tokens_per_second.expect("tokens per second");
    assert!((17.5..=21.0).contains(&pace.p50), "stream pace {pace:?}");
    let tpot = r.time_per_output_token_ms.expect("TPOT");
    assert!(tpot.p50 > itl.p50 * 1.2, "TPOT counts to the end of the body: {tpot:?} vs {itl:?}");

    // Goodput under an SLO: every answer takes 300+ ms.
    let mut strict = options(mock.url(), Load::Closed { concurrency: 4 }, 8);
    strict.prompts = Prompts::Mix(Mix::StreamChat);
    strict.slo = Some(Slo::parse("ttft=100ms").unwrap());
    let r = report(strict.clone()).await;
    assert_eq!((r.status_2xx, r.goodput_per_second, r.slo_attainment_percent), (8, 0.0, Some(0.0)));
    strict.slo = Some(Slo::parse("ttft=2s,itl=500ms,e2e=10s").unwrap());
    let r = report(strict).await;
    assert_eq!(r.slo_attainment_percent, Some(100.0));
    assert!(r.goodput_per_second > 0.0 && (r.goodput_per_second - r.throughput_per_second).abs() < 1e-9);
}

/// A run at 20/s for 3 s of 300 ms answers: requests/s counts the window, not the drain (the
/// old reading, 60 requests over 3.3 s, was 18.2/s).
#[tokio::test]
async fn rates_count_the_measured_window_without_the_drain() {
    let mock = mock(MockOptions { latency: Duration::from_millis(300), ..MockOptions::default() }).await;
    let mut o = BenchOptions::new(mock.url(), Load::Constant { rate: 20.0 });
    o.duration = Some(Duration::from_secs(3));
    let r = report(o.clone()).await;
    assert_eq!(r.requests_sent, 60);
    assert!((19.0..=21.0).contains(&r.throughput_per_second), "{r:?}");
    assert!((r.output_tokens_per_second - 16.0 * r.throughput_per_second).abs() < 1e-6);
    // Warm-up and cool-down are sent but not measured.
    o.warmup = Duration::from_millis(500);
    o.cooldown = Duration::from_millis(500);
    let r = report(o).await;
    assert_eq!((r.requests_sent, r.requests_measured), (60, 40));
    assert!((r.duration_seconds - 2.0).abs() < 1e-9);
    assert!((19.0..=21.0).contains(&r.throughput_per_second), "{r:?}");
}

#[tokio::test]
async fn poisson_arrivals_are_exponential_and_synthetic_prompts_are_shaped() {
    let mock = mock(MockOptions::default()).await;
    let mut o = options(mock.url(), Load::Poisson { rate: 400.0 }, 1000);
    o.seed = 42;
    o.shape =
        Shape { prompt_tokens: Some(Dist::Uniform(20, 40)), max_tokens: Some(Dist::Fixed(8)), stream_share: Some(0.5) };
    let run = run(o, false).await.unwrap();
    assert_eq!(run.report.status_2xx, 1000);
    let mut at: Vec<f64> = run.samples.iter().map(|s| s.scheduled).collect();
    at.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let chi = exponential_chi_square(&gaps, 400.0, 10);
    assert!(chi < 27.88, "chi-square {chi} over 9 degrees of freedom");
    // Half streamed; max_tokens 8 cuts the mock's 16; the mock counts the prompt its own way,
    // but it grows with the synthetic prompt's 20 to 40 tokens.
    assert_eq!(run.samples.iter().filter(|s| s.stream).count(), 500);
    assert_eq!(run.report.output_tokens.as_ref().map(|s| s.max), Some(8.0));
    let input = run.report.input_tokens.as_ref().unwrap();
    assert!(input.max > input.p50 && input.p50 > 20.0, "{input:?}");
    assert_eq!(run.report.time_to_first_token_ms.as_ref().map(|s| s.count), Some(500));
}

/// The mock works on two requests at once, 50 ms each: 40 requests/s at most.
#[tokio::test]
async fn a_sweep_finds_the_knee_of_a_throttled_backend() {
    let capped = MockOptions { latency: Duration::from_millis(50), max_concurrency: Some(2), ..MockOptions::default() };
    let mock = mock(capped).await;
    let mut o = BenchOptions::new(mock.url(), Load::Constant { rate: 10.0 });
    o.duration = Some(Duration::from_secs(2));
    o.sweep = vec![10.0, 20.0, 30.0, 60.0, 80.0];
    let r = run(o, false).await.unwrap();
    let sweep = r.report.sweep.clone().expect("a sweep");
    let met: Vec<(f64, bool)> = sweep.steps.iter().map(|s| (s.value, s.met)).collect();
    assert_eq!(met, vec![(10.0, true), (20.0, true), (30.0, true), (60.0, false)], "{sweep:?}");
    assert_eq!(sweep.knee, Some(30.0));
    let saturated = &sweep.steps[3];
    assert!(saturated.throughput_per_second < 45.0, "{saturated:?}");
    assert!(r.report.mode.contains("30"), "the report is the knee's: {}", r.report.mode);
    assert!(r.report.table().contains("knee        30"));
    assert_eq!(r.step, 2);

    // A closed loop: concurrency 1 gives 20/s, 2 gives 40/s, 4 no more.
    let mut closed = BenchOptions::new(mock.url(), Load::Closed { concurrency: 1 });
    closed.duration = Some(Duration::from_secs(1));
    closed.sweep = vec![1.0, 2.0, 4.0];
    let sweep = report(closed).await.sweep.unwrap();
    assert_eq!(sweep.knee, Some(2.0), "{sweep:?}");
    assert_eq!(sweep.steps.len(), 3);
}

#[tokio::test]
async fn it_counts_429s_by_code_under_a_quota_and_reports_the_wait_when_retrying() {
    let clock = Arc::new(ManualClock::new(0));
    let h = Harness::with(Setup {
        deployment: "requests_per_minute = 50".into(),
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let mut through = options(format!("http://{}", h.addr()), Load::Closed { concurrency: 4 }, 70);
    through.key = Some(PRIMARY_KEY.into());
    through.deployment = Some(DEPLOYMENT.into());
    let r = report(through.clone()).await;
    assert_eq!((r.requests_sent, r.status_2xx, r.status_429), (70, 50, 20), "a frozen clock admits exactly the minute");
    assert_eq!(r.errors.get("429 TooManyRequests"), Some(&20), "{:?}", r.errors);
    // The gateway says what it added and what the backend took.
    let (gw, backend) = (r.gateway_ms.expect("gw"), r.backend_ms.expect("backend"));
    assert_eq!((gw.count, backend.count), (50, 50), "on forwarded answers only");
    assert!(gw.p50 > 0.0 && backend.p50 > 0.0);

    // On the real clock with --retry-429, every request ends admitted, and the wait is counted.
    let h = Harness::with(Setup { deployment: "requests_per_minute = 600".into(), ..Default::default() }).await;
    through.url = format!("http://{}", h.addr());
    through.requests = Some(620);
    through.retry_429 = true;
    let r = report(through).await;
    assert_eq!((r.status_2xx, r.status_429), (620, 0));
    assert!(r.retries_after_429 >= 1, "{r:?}");
    let wait = r.retry_wait_ms.expect("the time spent waiting");
    assert!(wait.count >= 1 && wait.p50 > 0.0, "{wait:?}");

    let mut wrong = options(format!("http://{}", h.addr()), Load::Closed { concurrency: 1 }, 3);
    wrong.deployment = Some(DEPLOYMENT.into());
    wrong.key = Some("wrong".into());
    let r = report(wrong).await;
    assert_eq!(r.status_4xx, 3);
    assert_eq!(r.errors.keys().collect::<Vec<_>>(), vec!["401 Unauthorized"]);
    assert!(run(options("ftp://x".into(), Load::Closed { concurrency: 1 }, 1), false).await.is_err());
}

/// Loads `page` in headless Chromium: the DOM after its script ran, and the console lines.
fn load_in_chromium(browser: &str, page: &std::path::Path) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("timeout")
        .arg("120")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
    let console =
        String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_owned).collect();
    (String::from_utf8_lossy(&output.stdout).into_owned(), console)
}

#[tokio::test]
async fn the_html_report_renders_its_charts_in_headless_chromium() {
    // The Debian package (CI installs it).
    let browser = "chromium";
    if !tool_installed("the_html_report_renders_its_charts_in_headless_chromium", browser, "chromium") {
        return;
    }
    let paced = MockOptions {
        tokens_per_second: 500,
        max_concurrency: Some(4),
        latency: Duration::from_millis(5),
        ..MockOptions::default()
    };
    let mock = mock(paced).await;
    let mut o = BenchOptions::new(mock.url(), Load::Poisson { rate: 20.0 });
    o.duration = Some(Duration::from_millis(800));
    o.sweep = vec![20.0, 40.0];
    o.shape = Shape { stream_share: Some(0.5), ..Shape::default() };
    let run = run(o, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.html");
    tollgate::process::bench::html::write(&path, &run).unwrap();
    let page = std::fs::read_to_string(&path).unwrap();
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import"),
        "self-contained"
    );
    let figures = page.matches("<figure>").count();
    // Latency and TTFT CDFs, two ITL distributions, requests and tokens over time, latency over
    // time, and the sweep's two charts.
    assert_eq!(figures, 9, "{page}");

    let (dom, console) = load_in_chromium(browser, &path);
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(
        dom.contains(&format!("data-charts=\"{figures}\"")),
        "every chart laid out: {}",
        &dom[..dom.len().min(400)]
    );

    // The check itself sees a page's console errors.
    let broken = dir.path().join("broken.html");
    std::fs::write(&broken, "<html><body><script>throw new Error('seen')</script></body></html>").unwrap();
    let (_, console) = load_in_chromium(browser, &broken);
    assert!(console.iter().any(|l| l.contains("Uncaught Error: seen")), "{console:?}");
}

/// Runs the `tollgate` binary off the runtime (the mock keeps serving meanwhile).
async fn tollgate(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_writes_json_csv_and_compares_two_runs() {
    let mock = mock(MockOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let bench = |extra: &[&str]| {
        let mut args: Vec<String> =
            ["bench", "--url", &mock.url(), "--requests", "40", "--json"].iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let a = tollgate(bench(&["--concurrency", "4", "--csv", &file("a.csv")])).await;
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let report: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(report["status_2xx"], 40);
    assert_eq!(report["output_tokens"]["p50"], 16.0);
    let csv = std::fs::read_to_string(file("a.csv")).unwrap();
    assert_eq!(csv.lines().count(), 41, "a header and one row per request");
    std::fs::write(file("a.json"), &a.stdout).unwrap();
    let b = tollgate(bench(&["--concurrency", "4", "--mix", "stream-chat"])).await;
    assert!(b.status.success());
    std::fs::write(file("b.json"), &b.stdout).unwrap();

    let compared = tollgate(vec!["bench".into(), "compare".into(), file("a.json"), file("b.json")]).await;
    assert!(compared.status.success(), "{}", String::from_utf8_lossy(&compared.stderr));
    let table = String::from_utf8(compared.stdout).unwrap();
    assert!(table.lines().any(|l| l.starts_with("requests/s")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("latency ms p99")), "{table}");
    assert!(!table.contains("ttft"), "only figures both runs have: {table}");

    // Bad input is named.
    let bad = tollgate(vec!["bench".into(), "compare".into(), file("a.csv"), file("b.json")]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a `tollgate bench --json` report"));
    // Extra headers reach the target: the mock answers the tokens it is told.
    let told = tollgate(bench(&["--concurrency", "2", "--header", "x-mock-completion-tokens: 3"])).await;
    assert!(told.status.success(), "{}", String::from_utf8_lossy(&told.stderr));
    let told: serde_json::Value = serde_json::from_slice(&told.stdout).unwrap();
    assert_eq!(told["output_tokens"]["max"], 3.0, "{told}");
    for (args, says) in [
        (vec!["--header", "no-colon"], "--header 'no-colon'"),
        (vec!["--slo", "ttft=fast"], "--slo ttft"),
        (vec!["--max-tokens", "uniform:9-3"], "--max-tokens"),
        (vec!["--arrivals", "poisson"], "needs --rate"),
        (vec!["--warmup", "20s", "--duration", "10s"], "leave nothing"),
        (vec!["--arrivals", "trace"], "--replay"),
        (vec!["--arrivals", "poisson", "--concurrency", "3"], "an open loop takes --rate"),
    ] {
        let out = tollgate(bench(&args)).await;
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
