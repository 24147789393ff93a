//! The floor for gateway benchmarks: a bare pass-through proxy built from the crates tollgate
//! uses (hyper, hyper-util's auto server and pooled client, tokio), with nothing on top: no
//! auth, no quota, no body read, no parsing, no metrics. What tollgate costs above this is what
//! its features cost (`benches/fast_backend.sh`).
//!
//!   floor_proxy --listen 127.0.0.1:18720 --upstream 127.0.0.1:18700 [--http1-only]
//!               [--current-thread | --workers N]
//!
//! The runtime: tokio's multi-thread runtime by default; `--current-thread` one single-threaded
//! runtime; `--workers N` tollgate's design (`src/process/workers.rs`): N threads with a
//! current-thread runtime each, the accept loop handing each connection to the next in turn, and
//! one client pool per worker.
//!
//! Without `--listen` (as under `cargo test --all-targets`) it only checks that it can build
//! its client, and exits.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Pool = Client<HttpConnector, Incoming>;

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

type Answer = Response<Either<Incoming, Empty<Bytes>>>;

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}

async fn forward(pool: Pool, upstream: SocketAddr, mut request: Request<Incoming>) -> Answer {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{upstream}{path}").parse() else { return status(StatusCode::BAD_REQUEST) };
    *request.uri_mut() = uri;
    match pool.request(request).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn main() {
    let Some(listen) = arg("--listen").and_then(|a| a.parse::<SocketAddr>().ok()) else {
        let _: Pool = Client::builder(TokioExecutor::new()).build_http();
        return;
    };
    let Some(upstream) = arg("--upstream").and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("floor_proxy: --upstream HOST:PORT is required");
        std::process::exit(2);
    };
    // `--http1-only`: hyper's HTTP/1.1 server alone, without hyper-util's version detection.
    let http1_only = std::env::args().any(|a| a == "--http1-only");
    // `--current-thread`: one single-threaded runtime (a lower bound on scheduling cost).
    let runtime = if std::env::args().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let workers = arg("--workers").and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0);
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("floor_proxy: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("floor_proxy: cannot listen on {listen}: {error}");
                std::process::exit(1);
            }
        };
        let Some(count) = workers else {
            let pool = pool();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(stream, pool.clone(), upstream, http1_only));
            }
        };
        // One current-thread runtime per worker thread, each with its own pool; the runtimes
        // are kept alive by the threads parked in `block_on(pending)`.
        let handles: Vec<tokio::runtime::Handle> = (0..count)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                    let Ok(runtime) = runtime else { std::process::exit(1) };
                    let _ = tx.send(runtime.handle().clone());
                    runtime.block_on(std::future::pending::<()>());
                });
                rx.recv().unwrap_or_else(|_| std::process::exit(1))
            })
            .collect();
        // A pool per worker: its connections are spawned (and stay) on the worker that made them.
        let pools: Vec<Pool> = (0..count).map(|_| pool()).collect();
        let mut next = 0;
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let Ok(stream) = stream.into_std() else { continue };
            let (handle, pool) = (&handles[next % count], pools[next % count].clone());
            next += 1;
            handle.spawn(async move {
                if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                    serve(stream, pool, upstream, http1_only).await;
                }
            });
        }
    });
}

/// The pooled client (keep-alive, no Nagle).
fn pool() -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn serve(stream: tokio::net::TcpStream, pool: Pool, upstream: SocketAddr, http1_only: bool) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let pool = pool.clone();
        async move { Ok::<_, Infallible>(forward(pool, upstream, request).await) }
    });
    let io = TokioIo::new(stream);
    if http1_only {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    } else {
        let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    }
}
