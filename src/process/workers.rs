//! The data plane's worker threads: one single-threaded tokio runtime per worker
//! (`server.workers`, one per core by default), each serving the connections it is handed from
//! start to end, as nginx's worker processes and pingora's per-thread runtimes do.
//!
//! Why not tokio's multi-thread runtime: with work stealing, a connection's task, its backend
//! connection's task and the timers they arm wander between threads, and every hand-over is a
//! cross-thread wake-up (a futex and an `epoll_wait` return). Behind a backend faster than the
//! gateway the bare pass-through proxy in `benches/floor_proxy.rs` spent 23.0 µs of CPU per request
//! on the multi-thread runtime and 18.3 µs on one current-thread runtime (BENCHMARKS.md). Here a
//! connection lives on one worker, and so do the backend connections it uses (each worker has its
//! own pools: [`Worker`] picks them).
//!
//! The accept loop stays on the caller's runtime and hands each accepted socket to the worker
//! with the fewest open connections (balanced exactly, unlike `SO_REUSEPORT`'s hash, and without
//! letting a second process bind the same port).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub use crate::core::worker::Worker;

/// The running workers. Dropping it stops them; [`Workers::stop`] also waits for their threads.
pub struct Workers {
    workers: Vec<Running>,
}

struct Running {
    handle: Handle,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Counts a connection against its worker while alive.
pub struct Assigned {
    pub worker: Worker,
    open: Arc<AtomicUsize>,
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one), each with a current-thread runtime with I/O,
    /// timers and its own blocking pool.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("tollgate-worker-{index}")).spawn(move || {
                // Runs the tasks spawned onto this worker until told to stop. Dropping the
                // runtime then drops what is left (idle backend connections) and waits for the
                // blocking pool's running jobs (a count that settles a reservation).
                let _ = runtime.block_on(stopped);
                drop(runtime);
            })?;
            workers.push(Running {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// The worker with the fewest open connections (the first of equals), counted until the
    /// returned guard is dropped.
    pub fn assign(&self) -> Assigned {
        let (index, running) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .unwrap_or((0, &self.workers[0]));
        running.open.fetch_add(1, Ordering::Relaxed);
        Assigned { worker: Worker(index), open: Arc::clone(&running.open) }
    }

    /// Runs `task` on the worker.
    pub fn spawn<F>(&self, worker: Worker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = &self.workers[worker.0 % self.workers.len()];
        drop(running.handle.spawn(task));
    }

    /// Stops every worker and waits for its thread (blocking: call off the async workers).
    pub fn stop(mut self) {
        self.stop_all();
        for running in &mut self.workers {
            if let Some(thread) = running.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn stop_all(&mut self) {
        for running in &mut self.workers {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let workers = Workers::start(3).expect("workers");
        let a = workers.assign();
        let b = workers.assign();
        let c = workers.assign();
        assert_eq!([a.worker, b.worker, c.worker], [Worker(0), Worker(1), Worker(2)]);
        drop(b);
        assert_eq!(workers.assign().worker, Worker(1), "the worker that lost a connection gets the next");
        drop((a, c));
        workers.stop();
    }

    #[test]
    fn tasks_run_on_the_workers_own_threads() {
        let workers = Workers::start(2).expect("workers");
        let (tx, rx) = std::sync::mpsc::channel();
        for index in 0..2 {
            let tx = tx.clone();
            workers.spawn(Worker(index), async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().expect("ran").expect("named")).collect();
        names.sort();
        assert_eq!(names, ["tollgate-worker-0", "tollgate-worker-1"]);
        workers.stop();
    }
}
