//! Keep-alive pool of HTTP/1.1 connections to one upstream node.
//!
//! A connection goes back to the pool only when its response body has been read to the end;
//! anything that saw an error is dropped. Limits follow APISIX's `keepalive_pool`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::h1::H1Conn;
use crate::config::{seconds, KeepalivePool};

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as data-plane worker `id` (its own share of every pool).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// Pools are split per worker, as nginx's `keepalive` is per worker process: a connection
/// stays on the thread whose runtime drives it.
const MAX_WORKERS: usize = 64;

struct Idle {
    conn: H1Conn,
    since: Instant,
    served: u64,
}

/// A connection checked out of (or new for) a pool.
pub struct Conn {
    /// The connection.
    pub conn: H1Conn,
    /// Requests served before this one.
    pub served: u64,
    /// Whether it came from the pool (a failure on it may be a stale keep-alive).
    pub reused: bool,
}

/// Idle connections to one node, one list per worker.
pub struct Pool {
    idle: Vec<Mutex<Vec<Idle>>>,
    limits: KeepalivePool,
    idle_timeout: Duration,
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The connect timeout expired.
    Timeout,
    /// Name resolution, refusal, handshake failure.
    Failed(String),
}

impl Pool {
    /// An empty pool with APISIX's limits.
    pub fn new(limits: KeepalivePool) -> Arc<Self> {
        Arc::new(Pool {
            idle: (0..MAX_WORKERS).map(|_| Mutex::new(Vec::new())).collect(),
            limits,
            idle_timeout: seconds(limits.idle_timeout),
        })
    }

    /// The most recently used live idle connection, if any.
    pub fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle[worker() % MAX_WORKERS].lock();
        while let Some(c) = idle.pop() {
            if !c.conn.looks_idle() || c.since.elapsed() > self.idle_timeout {
                continue;
            }
            return Some(Conn {
                conn: c.conn,
                served: c.served,
                reused: true,
            });
        }
        None
    }

    /// Returns a connection whose exchange completed cleanly.
    pub fn checkin(&self, conn: H1Conn, served: u64) {
        if self.limits.size == 0 || served >= self.limits.requests || self.idle_timeout.is_zero() {
            return;
        }
        let mut idle = self.idle[worker() % MAX_WORKERS].lock();
        if idle.len() >= self.limits.size {
            // Evict the least recently used one.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
            served,
        });
    }

    /// Number of idle connections (tests and metrics).
    pub fn idle_len(&self) -> usize {
        self.idle.iter().map(|l| l.lock().len()).sum()
    }
}

/// Opens a new connection within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(e)) => return Err(ConnectError::Failed(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        conn: H1Conn::new(stream),
        served: 0,
        reused: false,
    })
}
