//! `tollgate bench` against the mock backend and through a gateway with a quota.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tollgate::core::clock::ManualClock;
use tollgate::process::bench::{BenchOptions, Load, Mix, Report, run};
use tollgate::process::mock_backend::{MockBackend, MockOptions};

fn options(url: String, load: Load, requests: u64) -> BenchOptions {
    BenchOptions {
        url,
        key: None,
        deployment: None,
        mix: Mix::ShortChat,
        body: None,
        load,
        duration: Duration::from_secs(600),
        requests: Some(requests),
        retry_429: false,
    }
}

fn ordered(report: &Report) {
    let l = &report.latency_ms;
    assert!(l.p50 > 0.0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, "{l:?}");
}

#[tokio::test]
async fn closed_and_open_loops_count_every_request() {
    let mock = MockBackend::start(([127, 0, 0, 1], 0).into(), MockOptions::default()).await.unwrap();
    let closed = run(options(mock.url(), Load::Closed { concurrency: 8 }, 300), false).await.unwrap();
    assert_eq!((closed.requests_sent, closed.status_2xx, closed.transport_errors), (300, 300, 0));
    assert!(closed.throughput_per_second > 0.0);
    ordered(&closed);
    assert!(closed.time_to_first_token_ms.is_none());

    let open = run(options(mock.url(), Load::Open { rate: 400.0 }, 100), false).await.unwrap();
    assert_eq!((open.requests_sent, open.status_2xx), (100, 100));
    assert!(open.mode.contains("open loop"));
    ordered(&open);

    let mut streamed = options(mock.url(), Load::Closed { concurrency: 4 }, 40);
    streamed.mix = Mix::StreamChat;
    let streamed = run(streamed, false).await.unwrap();
    assert_eq!(streamed.status_2xx, 40);
    let ttft = streamed.time_to_first_token_ms.expect("time to first token");
    assert!(ttft.p50 > 0.0 && ttft.p50 <= streamed.latency_ms.max);
    assert!(streamed.tokens_per_second.is_some());

    let mut embeddings = options(mock.url(), Load::Closed { concurrency: 2 }, 20);
    embeddings.mix = Mix::Embeddings;
    assert_eq!(run(embeddings, false).await.unwrap().status_2xx, 20);
}

#[tokio::test]
async fn it_counts_429s_under_a_quota_and_retries_them_when_asked() {
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
    let report = run(through.clone(), false).await.unwrap();
    assert_eq!(
        (report.requests_sent, report.status_2xx, report.status_429),
        (70, 50, 20),
        "a frozen clock admits exactly the minute"
    );

    // On the real clock with --retry-429, every request ends admitted.
    let h = Harness::with(Setup { deployment: "requests_per_minute = 600".into(), ..Default::default() }).await;
    through.url = format!("http://{}", h.addr());
    through.requests = Some(620);
    through.retry_429 = true;
    let report = run(through, false).await.unwrap();
    assert_eq!((report.status_2xx, report.status_429), (620, 0));
    assert!(report.retries_after_429 >= 1, "{report:?}");

    let mut wrong = options(format!("http://{}", h.addr()), Load::Closed { concurrency: 1 }, 3);
    wrong.deployment = Some(DEPLOYMENT.into());
    wrong.key = Some("wrong".into());
    assert_eq!(run(wrong, false).await.unwrap().status_4xx, 3);
    assert!(run(options("ftp://x".into(), Load::Closed { concurrency: 1 }, 1), false).await.is_err());
}
