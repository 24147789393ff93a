//! Stage 0, listen: the accept loop shared by the gateway, admin and mock-backend listeners, and
//! the TLS configuration of the ones that terminate TLS.
//!
//! Plain TCP, HTTP/1.1 and HTTP/2 (prior knowledge) on the same port via hyper-util's auto builder,
//! with the client limits applied: header read timeout (slowloris, and idle keep-alive for
//! HTTP/1.1), largest head and most headers (431 past them), and a cap on open connections (past
//! it the loop stops accepting, so new connections wait in the listen backlog). On shutdown it
//! stops accepting, then lets open connections finish up to the grace period and cuts the rest.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::ClientLimits;
use crate::process::workers::{Worker, Workers};
use crate::state::certificate::{CertStore, TlsError};

/// How a listener serves.
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub limits: ClientLimits,
    /// Counts open connections, when given.
    pub connections: Option<IntGauge>,
    /// Terminate TLS on this listener.
    pub tls: Option<TlsAcceptor>,
    /// Serve each connection on one of these worker runtimes (the data plane); without them,
    /// on the runtime the accept loop runs on.
    pub workers: Option<Arc<Workers>>,
}

/// Serves HTTP on `listener` with `handler` until `shutdown` turns true.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, Worker) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Turned true when the grace period is over: connections still open are dropped (their
    // response bodies with them, which settles and records each request).
    let (cut, cut_off) = watch::channel(false);
    loop {
        // A free connection slot first: when all are taken, stop accepting until one frees.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop_requested(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop_requested(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let open = Open::new(options.connections.clone(), permit);
                let connection = Connection {
                    builder: Arc::clone(&builder),
                    watcher: graceful.watcher(),
                    tls: options.tls.clone(),
                    cut_off: cut_off.clone(),
                    stop: shutdown.clone(),
                    handshake_timeout: limits.header_read_timeout,
                };
                let handler = handler.clone();
                match &options.workers {
                    None => {
                        tokio::spawn(async move {
                            connection.serve(stream, handler, Worker::default()).await;
                            drop(open);
                        });
                    }
                    Some(workers) => {
                        // The socket moves to the worker's own reactor.
                        let stream = match stream.into_std() {
                            Ok(stream) => stream,
                            Err(error) => {
                                tracing::debug!(%error, "cannot hand a connection to a worker");
                                continue;
                            }
                        };
                        let assigned = workers.assign();
                        let worker = assigned.worker;
                        workers.spawn(worker, async move {
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => connection.serve(stream, handler, worker).await,
                                Err(error) => tracing::debug!(%error, "a worker cannot take a connection"),
                            }
                            drop((assigned, open));
                        });
                    }
                }
            }
            Err(error) => {
                // Out of file descriptors and similar: wait a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the shutdown grace period were cut");
        let _ = cut.send(true);
        // Every cut connection gives its slot back once its task has dropped it.
        let _ = slots.acquire_many(u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX)).await;
    }
}

/// An open client connection: counted in the gauge and holding its slot until dropped.
struct Open {
    gauge: Option<IntGauge>,
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(gauge: Option<IntGauge>, slot: OwnedSemaphorePermit) -> Open {
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        Open { gauge, _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<TlsAcceptor>,
    cut_off: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
}

impl Connection {
    async fn serve<F, Fut, B>(self, stream: TcpStream, handler: F, worker: Worker)
    where
        F: Fn(Request<Incoming>, Worker) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Connection { builder, watcher, tls, mut cut_off, mut stop, handshake_timeout } = self;
        let service = service_fn(move |request| {
            let response = handler(request, worker);
            async move { Ok::<_, Infallible>(response.await) }
        });
        // Until its first byte, a connection costs only this small task (no hyper state yet), and
        // one that sends nothing is closed after the header read timeout (hyper's own timeout
        // only starts with the first request). At shutdown it closes at once, giving its
        // graceful-shutdown watcher back.
        let mut first = [0u8; 1];
        let first_byte = tokio::select! {
            peeked = tokio::time::timeout(handshake_timeout, stream.peek(&mut first)) => matches!(peeked, Ok(Ok(1))),
            () = stop_requested(&mut stop) => false,
        };
        if !first_byte {
            return;
        }
        // Boxed: the connection's state (HTTP/1.1 or HTTP/2, plain or TLS) is only allocated
        // for connections that talk.
        let served = Box::pin(async move {
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return Err(format!("TLS handshake failed: {error}").into()),
                        Err(_) => return Err("TLS handshake timed out".into()),
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            }
        });
        tokio::select! {
            result = served => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            () = stop_requested(&mut cut_off) => tracing::debug!("connection cut at the end of the shutdown grace period"),
        }
    }
}

/// Resolves when shutdown is asked for (or the sender is gone).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// TLS termination with rustls: TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, over the
/// certificate in use ([`CertStore`], state that reloads swap).
pub fn tls_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
