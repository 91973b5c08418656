//! The bridge to Python plugins: data-plane threads hand phase jobs to the Python runner
//! thread without ever taking the GIL.
//!
//! A job goes into a queue; the runner thread waits for jobs in Rust, without the GIL (as
//! Granian's blocking workers do), and is woken through a condition variable only when it
//! actually sleeps. It takes every queued job in one GIL section and runs the phases.
//!
//! Each outcome goes back as soon as its job is done (the data plane proxies one request
//! while Python runs the next), through the [`Mailbox`] of the data-plane thread that
//! waits for it: a thread is woken once for whatever arrives before it looks, not once per
//! outcome (a wake from another thread is a system call, and often an idle CPU to rouse).
//! Under load a busy runner is never signalled, and a busy data-plane thread rarely.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, Notify};

/// Which crossing a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// rewrite, access and before_proxy, in one crossing.
    Request,
    /// The access plugins below the native limiters' priority and before_proxy, after the
    /// limiters admitted the request (only when the first crossing asked for it).
    Late,
    /// header_filter, once the upstream response head is known.
    Header,
    /// body_filter, once per response body chunk (and once more at the end).
    Body,
    /// log, after the response; nobody waits for it.
    Log,
}

impl Phase {
    /// The phase name Python sees.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Late => "request_late",
            Phase::Header => "header_filter",
            Phase::Body => "body_filter",
            Phase::Log => "log",
        }
    }
}

/// The request as plugins see it; shared by all phases of one request.
pub struct RequestData {
    /// Unique per request within this process.
    pub id: u64,
    /// Method as received.
    pub method: Method,
    /// Target as received.
    pub uri: Uri,
    /// Canonical path.
    pub path: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Routing host.
    pub host: String,
    /// Client address.
    pub client: IpAddr,
    /// TCP peer.
    pub peer: SocketAddr,
    /// Listener address.
    pub local: SocketAddr,
    /// Matched route.
    pub route_id: Arc<str>,
    /// Captured path parameters.
    pub params: Vec<(String, String)>,
}

/// The response as `header_filter` and `log` see it.
#[derive(Clone)]
pub struct ResponseData {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
}

/// Changes a request crossing asks for.
#[derive(Debug, Default)]
pub struct Changes {
    /// Upstream request headers to set (replacing).
    pub set_headers: Vec<(String, String)>,
    /// Upstream request headers to remove.
    pub remove_headers: Vec<String>,
    /// New upstream path (and query if it contains `?`).
    pub uri: Option<String>,
    /// New upstream method.
    pub method: Option<String>,
    /// New upstream Host.
    pub host: Option<String>,
    /// Value of the debug header, when debug mode is on.
    pub debug: Option<String>,
    /// The authenticated consumer (`consumer_name`), for the native limiters' keys.
    pub consumer: Option<String>,
    /// Native limiters the consumer (or its group) configures: JSON list of limiter specs.
    pub limits: Option<String>,
    /// Plugins wait to run after the native limiters: cross again ([`Phase::Late`]).
    pub again: bool,
}

/// What a crossing decided.
#[derive(Debug)]
pub enum Outcome {
    /// Go on, with these changes.
    Continue(Changes),
    /// Answer the client now.
    Respond {
        /// Status.
        status: u16,
        /// Headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Bytes,
        /// Value of the debug header, when debug mode is on.
        debug: Option<String>,
    },
    /// body_filter result: what to send instead of the chunk.
    Chunk(Bytes),
    /// A request-phase plugin asks for the whole client body, at most `limit` bytes; the
    /// crossing's outcome then comes through `next`.
    NeedBody {
        /// The most bytes accepted.
        limit: usize,
        /// The body, or `None` when it is larger than `limit`, or an error text.
        reply: std::sync::mpsc::SyncSender<Result<Option<Bytes>, String>>,
        /// Where the rest of the crossing answers.
        next: oneshot::Receiver<Outcome>,
    },
    /// header_filter result: the response status and headers to send.
    Response {
        /// Status.
        status: u16,
        /// Complete header list.
        headers: Vec<(String, String)>,
        /// Value of the debug header, when debug mode is on.
        debug: Option<String>,
    },
}

/// One unit of work for the Python runner.
pub struct Job {
    /// Which crossing.
    pub phase: Phase,
    /// The request.
    pub request: Arc<RequestData>,
    /// The response, for header_filter and log.
    pub response: Option<ResponseData>,
    /// Where the outcome goes (none for log).
    pub reply: Option<Reply>,
    /// body_filter: the chunk and whether it is the last one.
    pub chunk: Option<(Bytes, bool)>,
}

/// Where a job's outcome goes: the waiting request's channel, through the mailbox of its
/// data-plane thread. Dropped unanswered, the request sees the runner gave up.
pub struct Reply {
    tx: oneshot::Sender<Outcome>,
    home: Option<Arc<Mailbox>>,
}

impl Reply {
    /// A reply channel for the calling thread (its mailbox, when it is a data-plane thread).
    pub fn channel() -> (Reply, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let home = HOME.with(|h| h.borrow().clone());
        (Reply { tx, home }, rx)
    }

    /// A second channel to the same thread (the rest of a crossing that asked for the body).
    pub fn renew(&self) -> (Reply, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let home = self.home.clone();
        (Reply { tx, home }, rx)
    }

    /// Sends the outcome now.
    pub fn send(self, outcome: Outcome) {
        match self.home {
            Some(home) => home.deliver(self.tx, outcome),
            // The request may be gone (client closed): nothing to do then.
            None => drop(self.tx.send(outcome)),
        }
    }
}

/// How long the runner may stay on one batch before [`Bridge::watch`] fails its requests.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Watches the runner of `bridge` ([`Bridge::watch`], once a second) in a thread of its
/// own, until the bridge is dropped.
pub fn spawn_watchdog(bridge: &Arc<Bridge>) -> std::io::Result<()> {
    let watched = Arc::downgrade(bridge);
    std::thread::Builder::new()
        .name("pygateway-plugin-watchdog".into())
        .spawn(move || {
            while let Some(bridge) = watched.upgrade() {
                bridge.watch(STALL_LIMIT);
                drop(bridge);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map(|_| ())
}

/// A reply in the runner's hands, which the watchdog can still take back.
pub type Held = Arc<Mutex<Option<Reply>>>;

/// Outcomes on their way to one data-plane thread.
pub struct Mailbox {
    items: Mutex<Vec<(oneshot::Sender<Outcome>, Outcome)>>,
    ready: Notify,
}

thread_local! {
    static HOME: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
}

impl Mailbox {
    /// Opens the calling thread's mailbox; [`Mailbox::serve`] must run on this thread.
    pub fn open() -> Arc<Mailbox> {
        let m = Arc::new(Mailbox {
            items: Mutex::new(Vec::new()),
            ready: Notify::new(),
        });
        HOME.with(|h| *h.borrow_mut() = Some(m.clone()));
        m
    }

    fn deliver(&self, tx: oneshot::Sender<Outcome>, outcome: Outcome) {
        let first = {
            let mut items = self.items.lock();
            items.push((tx, outcome));
            items.len() == 1
        };
        // Later ones ride on the first one's wake: serve takes everything there.
        if first {
            self.ready.notify_one();
        }
    }

    /// Hands arriving outcomes to their requests, on the mailbox's own thread (waking a
    /// task of this thread is no system call).
    pub async fn serve(self: Arc<Self>) {
        loop {
            self.ready.notified().await;
            let items = std::mem::take(&mut *self.items.lock());
            for (tx, outcome) in items {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// The queue between data-plane threads and the Python runner.
pub struct Bridge {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// The runner sleeps in [`Bridge::wait_all`] (read and written under the queue lock).
    sleeping: AtomicBool,
    /// [`Bridge::interrupt`] was called: the next wait returns at once.
    interrupted: AtomicBool,
    /// [`Bridge::close`] was called: no runner takes jobs any more.
    closed: AtomicBool,
    /// The replies of the batch the runner is working on, and since when (none while it
    /// waits): what [`Bridge::watch`] fails when a sync plugin blocks.
    batch: Mutex<(Option<std::time::Instant>, Vec<Held>)>,
    next_id: AtomicU64,
}

impl Bridge {
    /// An empty bridge.
    pub fn new() -> std::io::Result<Self> {
        Ok(Bridge {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            sleeping: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            batch: Mutex::new((None, Vec::new())),
            next_id: AtomicU64::new(1),
        })
    }

    /// A fresh request id.
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a job and wakes the runner if it sleeps. Never blocks for long: the queue
    /// lock is held for a push.
    pub fn submit(&self, job: Job) {
        let sleeping = {
            let mut q = self.queue.lock();
            if self.closed.load(Ordering::Relaxed) {
                // Dropped (after the lock): its request fails now rather than wait forever.
                drop(q);
                drop(job);
                return;
            }
            q.push_back(job);
            self.sleeping.load(Ordering::Relaxed)
        };
        if sleeping {
            self.ready.notify_one();
        }
    }

    /// Wakes a runner sleeping in [`Bridge::wait_all`] (to stop it, or to run something
    /// between batches).
    pub fn interrupt(&self) {
        let _q = self.queue.lock();
        self.interrupted.store(true, Ordering::Relaxed);
        self.ready.notify_all();
    }

    /// The runner took these jobs' replies (they stay in its hands until answered): the
    /// watchdog may drop them if the runner does not come back for more in time.
    pub fn hold(&self, replies: Vec<Held>) {
        let mut batch = self.batch.lock();
        batch.0 = (!replies.is_empty()).then(std::time::Instant::now);
        batch.1 = replies;
    }

    /// The watchdog, called every second or so: when the runner has been on one batch for
    /// longer than `limit` (a sync plugin blocks or loops, and nothing can interrupt it),
    /// fails that batch's requests and every queued one, rather than let them wait for a
    /// plugin that may never return. Returns how many requests it failed.
    pub fn watch(&self, limit: Duration) -> usize {
        let stuck = {
            let mut batch = self.batch.lock();
            match batch.0 {
                Some(since) if since.elapsed() >= limit => std::mem::take(&mut batch.1),
                _ => return 0,
            }
        };
        let mut failed = 0;
        for held in stuck {
            if held.lock().take().is_some() {
                failed += 1;
            }
        }
        failed += self.drop_queued(false);
        if failed > 0 {
            log::error!(
                "the plugin runner has been on one batch for over {} s (a sync plugin blocks?): \
                 {failed} request(s) failed",
                limit.as_secs()
            );
        }
        failed
    }

    /// The runner is gone: drops the queued jobs and every later one (their requests
    /// fail at once).
    pub fn close(&self) {
        self.drop_queued(true);
    }

    /// Drops every queued job, their requests failing at once (and, with `close`, every
    /// later one); returns how many were waiting for an answer.
    fn drop_queued(&self, close: bool) -> usize {
        let left = {
            let mut q = self.queue.lock();
            if close {
                self.closed.store(true, Ordering::Relaxed);
            }
            std::mem::take(&mut *q)
        };
        left.iter().filter(|j| j.reply.is_some()).count()
    }

    /// Takes every queued job, waiting up to `timeout` for one when there is none (or
    /// less, when interrupted). Call it without the GIL.
    pub fn wait_all(&self, timeout: Duration) -> Vec<Job> {
        // The runner is back for more: its last batch is done.
        self.hold(Vec::new());
        let mut q = self.queue.lock();
        if q.is_empty() && !self.interrupted.swap(false, Ordering::Relaxed) {
            self.sleeping.store(true, Ordering::Relaxed);
            self.ready.wait_for(&mut q, timeout);
            self.sleeping.store(false, Ordering::Relaxed);
            self.interrupted.store(false, Ordering::Relaxed);
        }
        q.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(bridge: &Bridge) -> (Job, oneshot::Receiver<Outcome>) {
        let (reply, rx) = Reply::channel();
        let req = RequestData {
            id: bridge.next_request_id(),
            method: Method::GET,
            uri: Uri::from_static("/a?b=1"),
            path: "/a".into(),
            headers: HeaderMap::new(),
            host: "h".into(),
            client: "127.0.0.1".parse().unwrap(),
            peer: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            route_id: Arc::from("r"),
            params: vec![],
        };
        (
            Job {
                phase: Phase::Request,
                request: Arc::new(req),
                response: None,
                reply: Some(reply),
                chunk: None,
            },
            rx,
        )
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn a_burst_is_taken_in_one_batch() {
        let b = Bridge::new().unwrap();
        for _ in 0..10 {
            b.submit(job(&b).0);
        }
        assert_eq!(b.wait_all(NOW).len(), 10);
        assert!(b.wait_all(NOW).is_empty());
    }

    #[test]
    fn a_sleeping_runner_is_woken_by_a_job_and_by_interrupt() {
        let b = Arc::new(Bridge::new().unwrap());
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_all(Duration::from_secs(30)).len())
        };
        while !b.sleeping.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        b.submit(job(&b).0);
        assert_eq!(waiter.join().unwrap(), 1);
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_all(Duration::from_secs(30)).len())
        };
        b.interrupt();
        assert_eq!(waiter.join().unwrap(), 0, "interrupt ends the wait");
    }

    #[test]
    fn outside_a_data_plane_thread_a_reply_goes_straight_to_the_waiter() {
        let b = Bridge::new().unwrap();
        let (j, rx) = job(&b);
        b.submit(j);
        let mut jobs = b.wait_all(NOW);
        jobs[0]
            .reply
            .take()
            .unwrap()
            .send(Outcome::Continue(Changes::default()));
        assert!(matches!(rx.blocking_recv(), Ok(Outcome::Continue(_))));
    }

    #[test]
    fn after_close_jobs_are_refused_at_once() {
        let b = Bridge::new().unwrap();
        let (queued, before) = job(&b);
        b.submit(queued);
        b.close();
        assert!(before.blocking_recv().is_err(), "a queued job is dropped");
        let (late, after) = job(&b);
        b.submit(late);
        assert!(after.blocking_recv().is_err(), "a later job is dropped");
        assert!(b.wait_all(NOW).is_empty());
    }

    #[test]
    fn the_watchdog_fails_a_stuck_batch_and_the_queue_but_not_a_busy_runner_in_time() {
        let b = Bridge::new().unwrap();
        let (j, taken) = job(&b);
        b.submit(j);
        let mut jobs = b.wait_all(NOW);
        let held: Held = Arc::new(Mutex::new(jobs[0].reply.take()));
        b.hold(vec![held.clone()]);
        let (queued, waiting) = job(&b);
        b.submit(queued);
        assert_eq!(b.watch(Duration::from_secs(60)), 0, "not stuck yet");
        assert!(held.lock().is_some());
        assert_eq!(b.watch(Duration::ZERO), 2);
        assert!(taken.blocking_recv().is_err(), "the stuck request failed");
        assert!(
            waiting.blocking_recv().is_err(),
            "the queued request failed"
        );
        assert!(held.lock().is_none(), "the runner can no longer answer it");
        b.wait_all(NOW); // the runner came back: nothing is held any more
        assert_eq!(b.watch(Duration::ZERO), 0);
    }

    #[test]
    fn a_dropped_reply_tells_the_waiter() {
        let b = Bridge::new().unwrap();
        let (j, rx) = job(&b);
        drop(j);
        assert!(rx.blocking_recv().is_err());
    }

    #[test]
    fn replies_from_another_thread_arrive_through_the_mailbox_with_one_wake() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let home = Mailbox::open();
            tokio::spawn(home.clone().serve());
            let b = Arc::new(Bridge::new().unwrap());
            let mut waiting = Vec::new();
            for _ in 0..5 {
                let (j, rx) = job(&b);
                b.submit(j);
                waiting.push(rx);
            }
            let runner = {
                let b = b.clone();
                std::thread::spawn(move || {
                    let jobs = b.wait_all(NOW);
                    for mut j in jobs {
                        let reply = j.reply.take().unwrap();
                        assert!(reply.home.is_some(), "made on a thread with a mailbox");
                        reply.send(Outcome::Chunk(Bytes::from_static(b"x")));
                    }
                })
            };
            runner.join().unwrap();
            // Every outcome is held in the mailbox until this thread serves it.
            assert_eq!(home.items.lock().len(), 5);
            for rx in waiting {
                assert!(matches!(rx.await, Ok(Outcome::Chunk(_))));
            }
            assert!(home.items.lock().is_empty());
        });
    }

    #[test]
    fn a_second_channel_goes_to_the_same_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let home = Mailbox::open();
            tokio::spawn(home.clone().serve());
            let (first, _rx) = Reply::channel();
            let (second, rx) = first.renew();
            assert!(Arc::ptr_eq(second.home.as_ref().unwrap(), &home));
            std::thread::spawn(move || second.send(Outcome::Chunk(Bytes::new())))
                .join()
                .unwrap();
            assert!(matches!(rx.await, Ok(Outcome::Chunk(_))));
        });
    }
}
