//! A steady load on one URL from a few clients, kept up while a test breaks something (kills
//! Redis, fails a primary over, moves a slot), then stopped to read every answer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::{CHAT, Client, PRIMARY_KEY};

pub struct SteadyLoad {
    running: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Option<StatusCode>>>>,
}

impl SteadyLoad {
    /// `clients` clients, each posting [`CHAT`] with [`PRIMARY_KEY`] to `url` and pausing
    /// `pause` between requests. An answer is its status; `None` when no HTTP answer came.
    pub fn start(client: &Client, url: String, clients: usize, pause: Duration) -> SteadyLoad {
        let running = Arc::new(AtomicBool::new(true));
        let made = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (client, url, running, made) =
                    (client.clone(), url.clone(), Arc::clone(&running), Arc::clone(&made));
                tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    while running.load(Ordering::Relaxed) {
                        let reply = client.try_post(&url, &[("api-key", PRIMARY_KEY)], CHAT).await;
                        statuses.push(reply.map(|r| r.status));
                        made.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                    statuses
                })
            })
            .collect();
        SteadyLoad { running, made, tasks }
    }

    /// Returns once `n` more requests have been answered.
    pub async fn ran(&self, n: usize) {
        let target = self.made.load(Ordering::Relaxed) + n;
        while self.made.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the load; every request's answer.
    pub async fn stop(self) -> Vec<Option<StatusCode>> {
        self.running.store(false, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all
    }
}

/// How many answered, and how many of them were admitted; anything but a 200 or a 429 fails the
/// test (a 503 would be an admission the store failed), as does a request with no answer.
pub fn answered_and_admitted(statuses: &[Option<StatusCode>]) -> (usize, u64) {
    let mut admitted = 0;
    for status in statuses {
        let status = status.expect("a request of the load got no HTTP answer");
        assert!([StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&status), "unexpected {status}");
        admitted += u64::from(status == StatusCode::OK);
    }
    (statuses.len(), admitted)
}
