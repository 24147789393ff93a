//! Stage 0, listen: the accept loop shared by the gateway, admin and mock-backend listeners.
//!
//! Plain TCP, HTTP/1.1 and HTTP/2 (prior knowledge) on the same port via hyper-util's auto builder.
//! On shutdown it stops accepting, then lets open connections finish up to a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long open connections get to finish after shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves HTTP on `listener` with `handler` until `shutdown` turns true.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    connections: Option<IntGauge>,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let service = service_fn(move |request| {
                        let response = handler(request);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                    let open = connections.clone();
                    if let Some(gauge) = &open {
                        gauge.inc();
                    }
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        if let Some(gauge) = open {
                            gauge.dec();
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and similar: wait a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = stop_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain deadline were cut");
    }
}

/// Resolves when shutdown is asked for (or the sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
