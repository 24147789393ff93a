//! A webhook receiver for the tests: a real HTTP/1.1 server on a listener the test owns,
//! answering 200 and keeping every request's headers and body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Webhooks received: headers and body.
pub type Received = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// A webhook receiver on `listener`, answering 200 to everything.
pub fn receive(listener: tokio::net::TcpListener) -> Received {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        log.lock().unwrap().push((parts.headers, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    received
}

pub async fn wait_for(received: &Received, n: usize) -> Vec<(http::HeaderMap, Bytes)> {
    for _ in 0..1500 {
        if received.lock().unwrap().len() >= n {
            return received.lock().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} webhooks arrived, not {n}", received.lock().unwrap().len());
}
