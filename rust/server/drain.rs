//! Graceful drain of HTTP/1 connections at the cost of one atomic load per poll.
//!
//! Connections are hyper's upgradeable ones: a 101 hands the connection to a tunnel task
//! (`enable_websocket`) and the watched connection ends there.
//!
//! hyper-util's `GracefulShutdown` polls a watch channel every time a connection is
//! polled; on a proxy's hot path that shows in profiles. Here each connection registers
//! its task's waker once; a drain sets a flag and wakes them all, and each connection then
//! asks hyper to finish its in-flight request and close.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1::UpgradeableConnection as Connection;
use hyper::service::HttpService;
use parking_lot::Mutex;
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    live: AtomicUsize,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
    all_closed: Notify,
}

/// Tracks live connections of one listener and drains them on demand.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

impl Drain {
    /// No connections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a connection so that a drain reaches it.
    pub fn watch<I, S, B>(&self, conn: Connection<I, S>) -> Watched<I, S>
    where
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<BoxError>,
        I: Read + Write + Unpin + Send + 'static,
        B: Body + 'static,
        B::Error: Into<BoxError>,
    {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        Watched {
            conn: Box::pin(conn),
            inner: self.inner.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
            shutting: false,
        }
    }

    /// Asks every connection to finish and close; resolves when all have.
    pub async fn shutdown(&self) {
        self.inner.draining.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.inner.wakers.lock().values().cloned().collect();
        for w in wakers {
            w.wake();
        }
        loop {
            let closed = self.inner.all_closed.notified();
            if self.inner.live.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// A task that outlives its HTTP connection (a tunnel after a 101), counted as live by its
/// [`Drain`] until dropped: a drain waits for it too, up to its timeout.
pub struct Tracked {
    inner: Arc<Inner>,
}

impl Drain {
    /// Counts one more live task until the returned guard drops.
    pub fn track(&self) -> Tracked {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        Tracked {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.all_closed.notify_waiters();
        }
    }
}

/// A connection under a [`Drain`].
pub struct Watched<I, S>
where
    S: HttpService<Incoming>,
{
    conn: Pin<Box<Connection<I, S>>>,
    inner: Arc<Inner>,
    id: u64,
    waker: Option<Waker>,
    shutting: bool,
}

impl<I, S, B> Future for Watched<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    type Output = hyper::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
            this.inner.wakers.lock().insert(this.id, cx.waker().clone());
        }
        if !this.shutting && this.inner.draining.load(Ordering::Acquire) {
            this.shutting = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<I, S> Drop for Watched<I, S>
where
    S: HttpService<Incoming>,
{
    fn drop(&mut self) {
        self.inner.wakers.lock().remove(&self.id);
        if self.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.all_closed.notify_waiters();
        }
    }
}
