//! Listeners, the hyper service, config application and graceful shutdown.

pub mod body;
pub mod demo;
pub mod drain;
pub mod plugins;
pub mod proxy;
pub mod request;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use crate::config::ChangeSet;
use crate::limit::local::LocalStore;
use crate::limit::{HeaderNames, LimiterSpec, Limits};
use crate::pipeline::Bridge;
use crate::router::ipmatch::IpMatcher;
use crate::router::{PathMode, RouteSpec, Router};
use crate::upstream::{Registry, Upstream};
use drain::Drain;
use proxy::{ConnInfo, RouteEntry};

/// Node settings the data plane needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT` listen addresses (port 0 picks a free port).
    pub listen: Vec<String>,
    /// Tokio worker threads.
    pub workers: usize,
    /// Router path mode.
    pub path_mode: PathMode,
    /// CIDRs of proxies whose X-Forwarded-For is believed.
    pub trusted_addresses: Vec<String>,
    /// Time a client has to send a request head.
    pub header_read_timeout: Duration,
    /// Address of the built-in demo origin, if it should run.
    pub demo_origin: Option<String>,
    /// Debug mode: every response says which plugins ran (`Apisix-Plugins`).
    pub debug: bool,
}

/// What every request reads: the router, the upstreams, the trusted proxies.
pub struct State {
    /// Routes.
    pub router: Router<RouteEntry>,
    /// Upstreams by key.
    pub upstreams: Registry,
    /// Trusted proxies.
    pub trusted: IpMatcher,
    /// The queue to the Python plugin runner.
    pub bridge: Arc<Bridge>,
    /// Debug mode.
    pub debug: bool,
    /// Counters of the local rate-limiting policy.
    pub limit_store: Arc<LocalStore>,
    /// limit-count's header names (`plugin_metadata/limit-count`).
    pub limit_headers: ArcSwap<HeaderNames>,
    /// Compiled consumer limiter confs, by their JSON text.
    consumer_limits: Mutex<HashMap<String, Arc<Limits>>>,
}

impl State {
    /// The compiled limiters of a consumer's JSON spec list (compiled once, then shared).
    pub fn consumer_limits(&self, specs: &str) -> Result<Arc<Limits>, String> {
        if let Some(l) = self.consumer_limits.lock().get(specs) {
            return Ok(l.clone());
        }
        let parsed: Vec<LimiterSpec> =
            serde_json::from_str(specs).map_err(|e| format!("bad limiter specs: {e}"))?;
        let limits = Limits::build(&parsed)?.unwrap_or_default();
        let mut cache = self.consumer_limits.lock();
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(specs.to_owned(), limits.clone());
        Ok(limits)
    }
}

struct Running {
    shutdown: watch::Sender<Option<Duration>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The data plane: owns a tokio runtime, serves until stopped.
pub struct Gateway {
    settings: Settings,
    state: Arc<State>,
    running: Mutex<Option<Running>>,
    addrs: Mutex<Vec<SocketAddr>>,
    demo_addr: Option<SocketAddr>,
    demo_listener: Mutex<Option<StdListener>>,
}

/// Errors of starting or configuring the data plane.
#[derive(Debug)]
pub struct GatewayError(pub String);

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GatewayError {}

impl Gateway {
    /// A stopped gateway with an empty config.
    pub fn new(settings: Settings) -> Result<Self, GatewayError> {
        let trusted = IpMatcher::new(&settings.trusted_addresses)
            .map_err(|e| GatewayError(format!("trusted_addresses: {e}")))?;
        // The demo origin binds at once so its address can go into the config before start.
        let demo_listener = match &settings.demo_origin {
            Some(a) => Some(bind(a)?),
            None => None,
        };
        let demo_addr = demo_listener.as_ref().and_then(|l| l.local_addr().ok());
        let bridge =
            Arc::new(Bridge::new().map_err(|e| GatewayError(format!("plugin bridge: {e}")))?);
        crate::pipeline::spawn_watchdog(&bridge)
            .map_err(|e| GatewayError(format!("plugin watchdog: {e}")))?;
        Ok(Gateway {
            state: Arc::new(State {
                router: Router::new(settings.path_mode),
                upstreams: Registry::default(),
                trusted,
                bridge,
                debug: settings.debug,
                limit_store: Arc::new(LocalStore::default()),
                limit_headers: ArcSwap::from_pointee(HeaderNames::default()),
                consumer_limits: Mutex::new(HashMap::new()),
            }),
            settings,
            running: Mutex::new(None),
            addrs: Mutex::new(Vec::new()),
            demo_addr,
            demo_listener: Mutex::new(demo_listener),
        })
    }

    /// Applies a change set: upstreams first, then routes in one router version.
    pub fn apply(&self, changes: ChangeSet) -> Result<(), GatewayError> {
        let mut ups = Vec::with_capacity(changes.upsert_upstreams.len());
        for c in &changes.upsert_upstreams {
            ups.push(Upstream::build(c, &self.state.upstreams.pools).map_err(GatewayError)?);
        }
        let upserts: Vec<(RouteSpec, Arc<RouteEntry>)> = changes
            .upsert_routes
            .into_iter()
            .map(|r| {
                let limits = Limits::build(&r.limits)
                    .map_err(|e| GatewayError(format!("route {}: {e}", r.id)))?;
                let entry = RouteEntry {
                    id: Arc::from(r.id.as_str()),
                    service_id: r.service_id.as_deref().map(Arc::from),
                    upstream: r.upstream.as_deref().map(|k| self.state.upstreams.slot(k)),
                    timeout: r.timeout,
                    phases: plugins::phase_bits(&r.phases),
                    limits,
                    websocket: r.websocket,
                };
                let spec = RouteSpec {
                    id: r.id,
                    uris: r.uris,
                    hosts: r.hosts,
                    methods: r.methods,
                    remote_addrs: r.remote_addrs,
                    vars: r.vars,
                    priority: r.priority,
                    seq: r.seq,
                };
                Ok((spec, Arc::new(entry)))
            })
            .collect::<Result<_, GatewayError>>()?;
        if let Some(meta) = &changes.plugin_metadata {
            self.state
                .limit_headers
                .store(Arc::new(HeaderNames::from_metadata(
                    meta.get("limit-count"),
                )));
        }
        for up in ups {
            self.state.upstreams.upsert(up);
        }
        self.state
            .router
            .apply_batch(upserts, changes.delete_routes)
            .map_err(|e| GatewayError(e.to_string()))?;
        for key in &changes.delete_upstreams {
            self.state.upstreams.remove(key);
        }
        Ok(())
    }

    /// The plugin bridge (the Python runner takes its jobs).
    pub fn bridge(&self) -> &Arc<Bridge> {
        &self.state.bridge
    }

    /// Number of routes served.
    pub fn route_count(&self) -> usize {
        self.state.router.len()
    }

    /// Binds the listeners and starts serving; returns the bound addresses.
    ///
    /// Each worker is a thread with its own single-threaded runtime and its own
    /// `SO_REUSEPORT` socket per listen address, as nginx workers: the kernel spreads
    /// connections, and a request never changes thread (nor does its upstream connection).
    pub fn start(&self) -> Result<Vec<SocketAddr>, GatewayError> {
        let mut running = self.running.lock();
        if running.is_some() {
            return Err(GatewayError("gateway is already running".into()));
        }
        let workers = self.settings.workers.max(1);
        // The first socket of each address resolves port 0; the other workers join it.
        let mut per_worker: Vec<Vec<StdListener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for l in &self.settings.listen {
            let first = bind(l)?;
            let local = first
                .local_addr()
                .map_err(|e| GatewayError(format!("listener {l}: {e}")))?;
            addrs.push(local);
            per_worker[0].push(first);
            for w in per_worker.iter_mut().skip(1) {
                w.push(bind(&local.to_string())?);
            }
        }
        let mut demo = self.demo_listener.lock().take();
        let (tx, rx) = watch::channel(None);
        let mut threads = Vec::with_capacity(workers);
        for (id, listeners) in per_worker.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| GatewayError(format!("failed to start a worker runtime: {e}")))?;
            let state = self.state.clone();
            let rx = rx.clone();
            let demo = if id == 0 { demo.take() } else { None };
            let timeout = self.settings.header_read_timeout;
            let thread = std::thread::Builder::new()
                .name(format!("pygateway-worker-{id}"))
                .spawn(move || {
                    crate::upstream::pool::set_worker(id);
                    runtime.block_on(run_worker(listeners, demo, state, rx, timeout));
                })
                .map_err(|e| GatewayError(format!("failed to start a worker thread: {e}")))?;
            threads.push(thread);
        }
        *self.addrs.lock() = addrs.clone();
        *running = Some(Running {
            shutdown: tx,
            threads,
        });
        Ok(addrs)
    }

    /// The bound addresses while running.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.addrs.lock().clone()
    }

    /// The demo origin's address (bound when the gateway is created).
    pub fn demo_address(&self) -> Option<SocketAddr> {
        self.demo_addr
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// Stops accepting, lets in-flight requests finish within `drain`, then closes the rest.
    pub fn stop(&self, drain: Duration) {
        let Some(r) = self.running.lock().take() else {
            return;
        };
        let _ = r.shutdown.send(Some(drain));
        for t in r.threads {
            let _ = t.join();
        }
        self.addrs.lock().clear();
    }
}

fn bind(addr: &str) -> Result<StdListener, GatewayError> {
    let sa: SocketAddr = addr.parse().map_err(|_| {
        GatewayError(format!(
            "invalid listen address {addr:?}: expected HOST:PORT"
        ))
    })?;
    let domain = socket2::Domain::for_address(sa);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(|e| GatewayError(format!("socket for {addr}: {e}")))?;
    let fail = |e: std::io::Error| GatewayError(format!("failed to listen on {addr}: {e}"));
    sock.set_reuse_address(true).map_err(fail)?;
    sock.set_reuse_port(true).map_err(fail)?;
    if sa.is_ipv6() {
        sock.set_only_v6(true).map_err(fail)?;
    }
    sock.bind(&sa.into()).map_err(fail)?;
    sock.listen(4096).map_err(fail)?;
    sock.set_nonblocking(true).map_err(fail)?;
    Ok(sock.into())
}

/// One worker: its listeners (and the demo origin on worker 0) until shutdown.
async fn run_worker(
    listeners: Vec<StdListener>,
    demo: Option<StdListener>,
    state: Arc<State>,
    shutdown: watch::Receiver<Option<Duration>>,
    header_read_timeout: Duration,
) {
    // Plugin outcomes for this thread's requests.
    tokio::spawn(crate::pipeline::Mailbox::open().serve());
    let mut tasks = Vec::new();
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(serve(
                l,
                state.clone(),
                shutdown.clone(),
                header_read_timeout,
            ))),
            Err(e) => log::error!("listener: {e}"),
        }
    }
    if let Some(l) = demo {
        match TcpListener::from_std(l) {
            Ok(l) => tasks.push(tokio::spawn(demo::serve(l, shutdown.clone()))),
            Err(e) => log::error!("demo listener: {e}"),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<Option<Duration>>,
    header_read_timeout: Duration,
) {
    let local = listener.local_addr().ok();
    let graceful = Drain::new();
    let drain = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let trusted = state.trusted.matches(peer.ip());
                let info = Arc::new(ConnInfo::new(
                    peer,
                    local.unwrap_or(peer),
                    graceful.clone(),
                    trusted,
                ));
                let st = state.clone();
                let svc = service_fn(move |req| proxy::handle(st.clone(), info.clone(), req));
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .writev(false)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        log::debug!("connection from {peer}: {e}");
                    }
                });
            }
            changed = shutdown.changed() => {
                let drain = if changed.is_ok() { *shutdown.borrow() } else { None };
                break drain.unwrap_or(Duration::ZERO);
            }
        }
    };
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("drain timeout: closing connections still in flight");
    }
}
