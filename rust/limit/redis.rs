//! The `redis` and `redis-cluster` policies: one server-side script per request.
//!
//! Each worker thread keeps its own multiplexed connection per Redis target (made on first
//! use inside that worker's runtime), so a request never waits for another thread and
//! never blocks one: the round trip is awaited like any other I/O. A failed connection is
//! dropped and made again on a later request, at most once per [`RECONNECT_BACKOFF`], so a
//! dead Redis costs a fast error (then the plugin's `allow_degradation` decides), not a
//! connect attempt per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Script};

use super::local::CountState;

const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// Where the counters live.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// One server: `redis://[:password@]host:port/db`.
    Single(String),
    /// A cluster, from its seed nodes (`redis://host:port`), with an optional password and
    /// TLS (`Some(verify the certificates)`).
    Cluster(Vec<String>, Option<String>, Option<bool>),
}

/// A Redis target with the plugin's timeout.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The server(s).
    pub target: Target,
    /// `redis_timeout`: connect and per-command limit.
    pub timeout: Duration,
    /// Identifies the target in the per-thread connection cache.
    id: String,
}

impl Backend {
    /// A backend for `target`.
    pub fn new(target: Target, timeout: Duration) -> Self {
        let id = format!("{target:?}");
        Backend {
            target,
            timeout,
            id,
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

#[derive(Default)]
struct Cached {
    conn: Option<Conn>,
    failed_at: Option<Instant>,
}

thread_local! {
    static CONNS: RefCell<HashMap<String, Arc<tokio::sync::Mutex<Cached>>>> =
        RefCell::new(HashMap::new());
}

/// rustls needs its crypto chosen once per process (TLS to Redis: `redis_ssl`).
fn crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another part of the process installed one first: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

async fn connect(b: &Backend) -> RedisResult<Conn> {
    crypto();
    match &b.target {
        Target::Single(url) => {
            let client = Client::open(url.as_str())?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(b.timeout))
                .set_response_timeout(Some(b.timeout));
            Ok(Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        }
        Target::Cluster(nodes, password, tls) => {
            let mut builder = redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(b.timeout)
                .response_timeout(b.timeout);
            if let Some(p) = password {
                builder = builder.password(p.clone());
            }
            if let Some(verify) = tls {
                builder = builder.tls(if *verify {
                    redis::TlsMode::Secure
                } else {
                    redis::TlsMode::Insecure
                });
            }
            Ok(Conn::Cluster(
                builder.build()?.get_async_connection().await?,
            ))
        }
    }
}

fn unavailable(msg: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis unavailable", msg.to_owned()))
}

/// The connection of this thread to `b`, made if needed.
async fn conn(b: &Backend) -> RedisResult<Conn> {
    let cell = CONNS.with(|c| c.borrow_mut().entry(b.id.clone()).or_default().clone());
    let mut cached = cell.lock().await;
    if let Some(c) = &cached.conn {
        return Ok(c.clone());
    }
    if cached
        .failed_at
        .is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF)
    {
        return Err(unavailable("reconnecting"));
    }
    match tokio::time::timeout(b.timeout, connect(b)).await {
        Ok(Ok(c)) => {
            cached.conn = Some(c.clone());
            cached.failed_at = None;
            Ok(c)
        }
        Ok(Err(e)) => {
            cached.failed_at = Some(Instant::now());
            Err(e)
        }
        Err(_) => {
            cached.failed_at = Some(Instant::now());
            Err(unavailable("connect timed out"))
        }
    }
}

fn forget(b: &Backend) {
    CONNS.with(|c| {
        if let Some(cell) = c.borrow().get(&b.id) {
            if let Ok(mut cached) = cell.try_lock() {
                cached.conn = None;
                cached.failed_at = Some(Instant::now());
            }
        }
    });
}

async fn run<T: redis::FromRedisValue>(
    b: &Backend,
    script: &Script,
    keys: &[&str],
    args: &[i64],
) -> RedisResult<T> {
    let conn = conn(b).await?;
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    for a in args {
        inv.arg(*a);
    }
    let fut = async {
        match conn {
            Conn::Single(mut c) => inv.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    };
    let result = match tokio::time::timeout(b.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(unavailable("command timed out")),
    };
    if let Err(e) = &result {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            forget(b);
        }
    }
    result
}

/// The server-side scripts, one copy shared with the python engine
/// (`python/pygateway/plugins/limit_scripts/`); each file says what it takes and returns.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(include_str!(concat!(
                "../../python/pygateway/plugins/limit_scripts/",
                $file
            )))
        })
    };
}

/// Fixed window; a key that lost its TTL is repaired as a new window.
static FIXED: LazyLock<Script> = script!("fixed.lua");

/// Sliding window over two aligned windows sharing a hash tag.
static SLIDING: LazyLock<Script> = script!("sliding.lua");

/// Leaky bucket in milli-units (`resty.limit.req`), clocked by the caller's `now`.
static BUCKET: LazyLock<Script> = script!("bucket.lua");

/// Connection count; the key expires after an hour without traffic.
static CONN_ENTER: LazyLock<Script> = script!("conn_enter.lua");

static CONN_LEAVE: LazyLock<Script> = script!("conn_leave.lua");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// limit-count, fixed window.
pub async fn count_fixed(
    b: &Backend,
    key: &str,
    limit: u64,
    window: Duration,
    cost: u64,
) -> RedisResult<CountState> {
    let window_ms = window.as_millis().max(1) as i64;
    let (left, ttl): (i64, i64) =
        run(b, &FIXED, &[key], &[limit as i64, window_ms, cost as i64]).await?;
    Ok(count_state(left, ttl))
}

/// A script's `{remaining (negative: rejected), ms until reset}`.
fn count_state(left: i64, reset_ms: i64) -> CountState {
    CountState {
        allowed: left >= 0,
        remaining: left.max(0) as u64,
        reset: reset_ms.max(0) as f64 / 1000.0,
    }
}

/// limit-count, sliding window.
pub async fn count_sliding(
    b: &Backend,
    key: &str,
    limit: u64,
    window: Duration,
    cost: u64,
) -> RedisResult<CountState> {
    let w = window.as_millis().max(1) as i64;
    let now = now_ms();
    let id = now / w;
    let current = format!("{{{key}}}:{id}");
    let previous = format!("{{{key}}}:{}", id - 1);
    let (left, reset): (i64, i64) = run(
        b,
        &SLIDING,
        &[&current, &previous],
        &[limit as i64, w, cost as i64, now - id * w],
    )
    .await?;
    Ok(count_state(left, reset))
}

/// limit-req: `Some(delay seconds)` or `None` when rejected.
pub async fn leaky_bucket(
    b: &Backend,
    key: &str,
    rate: f64,
    burst: f64,
) -> RedisResult<Option<f64>> {
    let rate_m = (rate * 1000.0) as i64;
    let burst_m = (burst * 1000.0) as i64;
    let excess: i64 = run(b, &BUCKET, &[key], &[rate_m.max(1), burst_m, now_ms()]).await?;
    Ok((excess >= 0).then(|| excess as f64 / 1000.0 / rate))
}

/// limit-conn: the count including this connection, or `None` beyond `max`.
pub async fn conn_enter(b: &Backend, key: &str, max: u64) -> RedisResult<Option<u64>> {
    let n: i64 = run(b, &CONN_ENTER, &[key], &[max as i64]).await?;
    Ok((n >= 0).then_some(n as u64))
}

/// limit-conn: a connection is over.
pub async fn conn_leave(b: &Backend, key: &str) -> RedisResult<()> {
    let _: i64 = run(b, &CONN_LEAVE, &[key], &[]).await?;
    Ok(())
}
