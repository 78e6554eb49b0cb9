//! Group commit: many writers, one flush.
//!
//! Writers insert into sled (fast, in memory), then ask for a [`Durable`] future. A
//! dedicated flusher thread takes every request queued so far, flushes sled, fsyncs its
//! data file, and resolves all of them at once. A request queued after a write is covered
//! by the next flush to start, so "resolved" implies "that write is on disk".
//!
//! In `Interval` mode the futures resolve at once and the thread flushes on a timer:
//! faster, but a crash loses up to one interval of acknowledged writes.
//!
//! The queue is a lock-free channel: there is no lock on the message path.

use crate::metrics::Metrics;
use std::fs::File;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// When an acknowledgement may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after a group-commit flush + fsync (the default).
    Flush,
    /// Acknowledge at once; flush every interval.
    Interval(Duration),
}

enum Request {
    Wait(oneshot::Sender<Result<(), String>>),
    Stop,
}

/// Resolves once the writes made before it was created are durable.
pub struct Durable(DurableInner);

enum DurableInner {
    Ready(Option<Result<(), String>>),
    Waiting(oneshot::Receiver<Result<(), String>>),
}

impl std::future::Future for Durable {
    type Output = Result<(), String>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            DurableInner::Ready(result) => std::task::Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err("durable future polled after completion".into())),
            ),
            DurableInner::Waiting(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Err("the store shut down before confirming the write".into()))
            }),
        }
    }
}

impl Durable {
    /// A future that fails at once (the store is closed).
    pub fn failed(why: &str) -> Durable {
        Durable(DurableInner::Ready(Some(Err(why.to_owned()))))
    }
}

/// The cheap, shareable side of the group commit: queues durability requests without
/// any lock (an mpsc sender).
#[derive(Clone)]
pub struct CommitHandle {
    mode: Durability,
    tx: mpsc::Sender<Request>,
}

/// Owns the flusher thread; stopping it flushes what is queued.
pub struct GroupCommit {
    tx: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher for `db`, fsyncing `data_file` (sled's `db` file) after each
    /// flush.
    pub fn start(
        db: sled::Db,
        data_file: File,
        mode: Durability,
        metrics: Arc<Metrics>,
    ) -> (GroupCommit, CommitHandle) {
        let (tx, rx) = mpsc::channel();
        // sled 0.34's flush() is sync_file_range, not fsync (sled #1452); an fsync of its
        // data file after each flush makes a batch survive a power cut too.
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flusher(db, data_file, rx, mode, metrics))
            .expect("spawning the store flusher thread"); // start-up only; no thread, no hub
        let handle = CommitHandle {
            mode,
            tx: tx.clone(),
        };
        (
            GroupCommit {
                tx,
                thread: Some(thread),
            },
            handle,
        )
    }

    /// Flushes what is queued and stops the thread.
    pub fn stop(&mut self) {
        let _ = self.tx.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

impl CommitHandle {
    /// A future that resolves once every write made before this call is durable
    /// (at once in `Interval` mode).
    pub fn durable(&self) -> Durable {
        match self.mode {
            Durability::Interval(_) => Durable(DurableInner::Ready(Some(Ok(())))),
            Durability::Flush => {
                let (tx, rx) = oneshot::channel();
                if self.tx.send(Request::Wait(tx)).is_err() {
                    return Durable::failed("the store is shut down");
                }
                Durable(DurableInner::Waiting(rx))
            }
        }
    }
}

fn flush_once(db: &sled::Db, data_file: &File, metrics: &Metrics) -> Result<(), String> {
    let started = Instant::now();
    db.flush().map_err(|e| format!("sled flush: {e}"))?;
    data_file.sync_data().map_err(|e| format!("fsync: {e}"))?;
    metrics.observe_flush(started.elapsed());
    Ok(())
}

fn flusher(
    db: sled::Db,
    data_file: File,
    rx: mpsc::Receiver<Request>,
    mode: Durability,
    metrics: Arc<Metrics>,
) {
    let mut waiters = Vec::new();
    loop {
        let first = match mode {
            Durability::Flush => rx.recv().ok(),
            Durability::Interval(every) => match rx.recv_timeout(every) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = flush_once(&db, &data_file, &metrics) {
                        tracing::error!(error = %e, "interval flush failed");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        let mut stop = match first {
            Some(Request::Wait(tx)) => {
                waiters.push(tx);
                false
            }
            Some(Request::Stop) | None => true,
        };
        // Everything queued by now rides on this one flush.
        while let Ok(request) = rx.try_recv() {
            match request {
                Request::Wait(tx) => waiters.push(tx),
                Request::Stop => stop = true,
            }
        }
        let result = flush_once(&db, &data_file, &metrics);
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit flush failed; writes not acknowledged");
        }
        metrics.add_batch(waiters.len());
        for waiter in waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
        if stop {
            return;
        }
    }
}
