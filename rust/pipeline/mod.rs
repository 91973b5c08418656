//! The bridge to Python plugins: data-plane threads hand phase jobs to the Python runner
//! thread without ever taking the GIL.
//!
//! A job goes into a queue; the runner thread waits for jobs in Rust, without the GIL (as
//! Granian's blocking workers do), and is woken through a condition variable only when it
//! actually sleeps. It takes every queued job in one GIL section, runs the phase, and
//! completes the job, which wakes the waiting request task through a oneshot channel.
//! Under load many jobs share one wake-up, and a busy runner is never signalled at all.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

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
    pub reply: Option<oneshot::Sender<Outcome>>,
    /// Request phases: where a plugin asks for the client's body.
    pub body: Option<tokio::sync::mpsc::UnboundedSender<BodyRequest>>,
    /// body_filter: the chunk and whether it is the last one.
    pub chunk: Option<(Bytes, bool)>,
}

/// A plugin asks for the whole client body, at most `limit` bytes.
pub struct BodyRequest {
    /// The most bytes accepted.
    pub limit: usize,
    /// The body, or `None` when it is larger than `limit`, or an error text.
    pub reply: std::sync::mpsc::SyncSender<Result<Option<Bytes>, String>>,
}

/// The queue between data-plane threads and the Python runner.
pub struct Bridge {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// The runner sleeps in [`Bridge::wait_all`] (read and written under the queue lock).
    sleeping: AtomicBool,
    /// [`Bridge::interrupt`] was called: the next wait returns at once.
    interrupted: AtomicBool,
    outbox: Mutex<Vec<(oneshot::Sender<Outcome>, Outcome)>>,
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
            outbox: Mutex::new(Vec::new()),
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

    /// Holds an outcome until [`Bridge::flush`]: completing a batch of jobs together wakes
    /// the data-plane thread once instead of once per job.
    pub fn complete_later(&self, reply: oneshot::Sender<Outcome>, outcome: Outcome) {
        self.outbox.lock().push((reply, outcome));
    }

    /// Delivers every held outcome.
    pub fn flush(&self) {
        let done = std::mem::take(&mut *self.outbox.lock());
        for (reply, outcome) in done {
            // The request may be gone (client closed): nothing to do then.
            let _ = reply.send(outcome);
        }
    }

    /// Takes every queued job, waiting up to `timeout` for one when there is none (or
    /// less, when interrupted). Call it without the GIL.
    pub fn wait_all(&self, timeout: Duration) -> Vec<Job> {
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
        let (tx, rx) = oneshot::channel();
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
                reply: Some(tx),
                body: None,
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
    fn held_outcomes_arrive_on_flush() {
        let b = Bridge::new().unwrap();
        let (j, mut rx) = job(&b);
        b.submit(j);
        let mut jobs = b.wait_all(NOW);
        let tx = jobs[0].reply.take().unwrap();
        b.complete_later(tx, Outcome::Continue(Changes::default()));
        assert!(rx.try_recv().is_err(), "delivered before flush");
        b.flush();
        assert!(matches!(rx.try_recv(), Ok(Outcome::Continue(_))));
    }

    #[test]
    fn completing_a_job_wakes_the_waiter() {
        let b = Bridge::new().unwrap();
        let (j, rx) = job(&b);
        b.submit(j);
        let mut jobs = b.wait_all(NOW);
        let tx = jobs[0].reply.take().unwrap();
        tx.send(Outcome::Continue(Changes::default())).unwrap();
        assert!(matches!(rx.blocking_recv(), Ok(Outcome::Continue(_))));
    }
}
