//! The request pipeline, top to bottom: parse → route → pick a node → forward → stream back.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use http_body_util::BodyExt;

use super::body::{PoolReturn, RequestBody, ResponseBody, TunnelLife, UpstreamBody, STALLED};
use super::drain::{Drain, Tracked};
use super::plugins;
use super::request::{BadRequest, RequestView};
use super::State;
use crate::config::{seconds, PassHost, Timeouts};
use crate::limit::{self, Limits};
use crate::pipeline::{Changes, Outcome, Phase, ResponseData};
use crate::router::RequestVars;
use crate::upstream::h1::{BodyReader, ExchangeError, Framing, ResponseHead};
use crate::upstream::pool::{self, Conn, ConnectError};
use crate::upstream::{Node, Upstream, UpstreamSlot};

/// What a matched route carries into the data plane.
pub struct RouteEntry {
    /// Route id.
    pub id: Arc<str>,
    /// The route's service, if any.
    pub service_id: Option<Arc<str>>,
    /// The upstream slot it proxies to, if any.
    pub upstream: Option<Arc<UpstreamSlot>>,
    /// Route-level timeouts.
    pub timeout: Option<Timeouts>,
    /// Python plugin crossings this route needs (`plugins::REQUEST | HEADER | LOG`);
    /// 0 means the request never touches Python.
    pub phases: u8,
    /// Native rate limiters, run after the request plugins' crossing.
    pub limits: Option<Arc<Limits>>,
    /// `enable_websocket`: protocol upgrades are proxied (a 101 becomes a tunnel).
    pub websocket: bool,
}

/// The `Server` header value.
pub const SERVER: &str = concat!("pygateway/", env!("CARGO_PKG_VERSION"));

/// Per-connection facts, with the header values derived from them made once.
pub struct ConnInfo {
    /// TCP peer.
    pub peer: SocketAddr,
    /// Local (listener) address.
    pub local: SocketAddr,
    /// The peer's IP as a header value.
    peer_ip: HeaderValue,
    /// The listener's port as a header value.
    local_port: HeaderValue,
    /// The listener's drain: a tunnel born on this connection is waited for by it.
    drain: Drain,
    /// Whether the peer is one of the node's `trusted_addresses` (fixed for the node).
    trusted: bool,
}

impl ConnInfo {
    /// Facts of a new connection.
    pub fn new(peer: SocketAddr, local: SocketAddr, drain: Drain, trusted: bool) -> Self {
        ConnInfo {
            drain,
            trusted,
            peer,
            local,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
            local_port: HeaderValue::from(local.port()),
        }
    }
}

/// Handles one request; never fails (errors become responses).
pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    if parts.method == http::Method::TRACE {
        // nginx refuses TRACE before any phase runs ("client sent TRACE method").
        return Ok(html_error(StatusCode::METHOD_NOT_ALLOWED));
    }
    if !conn.trusted {
        hide_claims(&mut parts.headers, &conn);
    }
    let mut body = RequestBody::new(body);
    let (routed, request, limits) = {
        let view = match RequestView::new(&parts, conn.peer, conn.local, &state.trusted) {
            Ok(v) => v,
            Err(e) => return Ok(bad_request(e)),
        };
        let Some(m) = state.router.matches(&view) else {
            return Ok(json_error(StatusCode::NOT_FOUND, "404 Route Not Found"));
        };
        let request = (m.payload.phases != 0)
            .then(|| plugins::request_data(&state.bridge, &parts, &view, &m, conn.trusted));
        // Limiters read their keys now unless Python request plugins run first (their
        // changes and the consumer they authenticate count then).
        let limits = match &m.payload.limits {
            Some(l) if m.payload.phases & plugins::REQUEST == 0 => {
                Some(l.resolve(&LimitVars::new(&view, &m.payload, None)))
            }
            _ => None,
        };
        let host_header = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let fwd = Forward {
            client: view.client,
            forwarded_host: host_header.clone(),
            host_header,
            route: m.payload,
        };
        (fwd, request, limits)
    };
    let Some(request) = request else {
        let admitted = match limits {
            Some(l) => match l
                .check(&state.limit_store, &state.limit_headers.load())
                .await
            {
                Ok(a) => Some(a),
                Err(refusal) => return Ok(refused(refusal, state.debug)),
            },
            None => None,
        };
        let mut resp = routed.proxy(&conn, parts, body, None).await;
        if let Some(a) = admitted {
            limited(&mut resp, a);
        }
        if state.debug {
            plugins::set_debug(&mut resp, Some("no plugin"));
        }
        return Ok(resp);
    };
    // The route has Python plugins: at most one crossing per phase.
    let phases = routed.route.phases;
    let mut debug = None;
    let mut changes = None;
    let mut answered = None;
    if phases & plugins::REQUEST != 0 {
        let stall = routed.route.timeout.unwrap_or_default().read;
        match decide(&state, Phase::Request, &request, &mut body, stall).await {
            Some(Decision::Proceed(c)) => {
                debug = c.debug.clone();
                changes = Some(c);
            }
            Some(Decision::Answer(resp, d)) => {
                // A plugin answered; the response phases still run (APISIX: ngx.exit).
                debug = d;
                answered = Some(resp);
            }
            None => return Ok(internal_error()),
        }
    }
    let mut admitted = None;
    let mut applied = false;
    if answered.is_none() {
        // The limiters run after the request plugins (authentication sets the consumer,
        // whose own limiter confs replace the route's).
        let effective = match changes.as_ref().and_then(|c| c.limits.as_deref()) {
            Some(specs) => match state.consumer_limits(specs) {
                Ok(c) => Some(Arc::new(Limits::overlay(
                    routed.route.limits.as_deref(),
                    &c,
                ))),
                Err(e) => {
                    log::error!("consumer limiters: {e}");
                    return Ok(internal_error());
                }
            },
            None => routed.route.limits.clone(),
        };
        let resolved = match (limits, &effective) {
            (Some(r), _) => Some(r),
            (None, Some(l)) => {
                if let Some(c) = &changes {
                    plugins::apply(&mut parts, c);
                    applied = true;
                }
                match RequestView::new(&parts, conn.peer, conn.local, &state.trusted) {
                    Ok(view) => {
                        let consumer = changes.as_ref().and_then(|c| c.consumer.as_deref());
                        Some(l.resolve(&LimitVars::new(&view, &routed.route, consumer)))
                    }
                    Err(e) => return Ok(bad_request(e)),
                }
            }
            (None, None) => None,
        };
        if let Some(r) = resolved {
            match r
                .check(&state.limit_store, &state.limit_headers.load())
                .await
            {
                Ok(a) => admitted = Some(a),
                Err(refusal) => answered = Some(refused(refusal, false)),
            }
        }
        // Plugins below the limiters' priority (and before_proxy) run now, in a second
        // crossing; a refused request never reaches them.
        let late = match &changes {
            Some(c) => c.again,
            None => phases & plugins::LATE != 0,
        };
        if late {
            if answered.is_some() {
                if changes.is_some() {
                    plugins::cancel_late(&state.bridge, &request);
                }
            } else {
                let stall = routed.route.timeout.unwrap_or_default().read;
                match decide(&state, Phase::Late, &request, &mut body, stall).await {
                    Some(Decision::Proceed(c)) => {
                        debug = c.debug.clone();
                        // The late changes include the first crossing's (one ctx).
                        applied = false;
                        changes = Some(c);
                    }
                    Some(Decision::Answer(resp, d)) => {
                        debug = d;
                        answered = Some(resp);
                    }
                    None => return Ok(internal_error()),
                }
            }
        }
    }
    let mut resp = match answered {
        Some(resp) => resp,
        None => {
            if let Some(c) = &changes {
                if !applied {
                    plugins::apply(&mut parts, c);
                }
            }
            let mut routed = routed;
            if let Some(host) = changes.as_ref().and_then(|c| c.host.as_deref()) {
                routed.host_header = HeaderValue::from_str(host).ok();
            }
            routed.proxy(&conn, parts, body, changes).await
        }
    };
    if let Some(a) = admitted {
        limited(&mut resp, a);
    }
    if phases & plugins::HEADER != 0 {
        let seen = ResponseData {
            status: resp.status(),
            headers: resp.headers().clone(),
        };
        match plugins::cross(&state.bridge, Phase::Header, &request, Some(seen)).await {
            Some(Outcome::Response {
                status,
                headers,
                debug: d,
            }) => {
                plugins::replace_head(&mut resp, status, headers);
                debug = d.or(debug);
            }
            _ => return Ok(internal_error()),
        }
    }
    plugins::set_debug(&mut resp, debug.as_deref());
    if phases & plugins::BODY != 0 {
        plugins::filter_body(&state.bridge, &request, &mut resp);
    }
    if phases & plugins::LOG != 0 {
        plugins::log_after(&state.bridge, &request, &mut resp);
    }
    Ok(resp)
}

/// What a request crossing decided: go on with these changes, or the plugins' answer.
enum Decision {
    Proceed(Changes),
    Answer(Response<ResponseBody>, Option<String>),
}

async fn decide(
    state: &State,
    phase: Phase,
    request: &Arc<crate::pipeline::RequestData>,
    body: &mut RequestBody,
    stall: f64,
) -> Option<Decision> {
    match plugins::cross_request(&state.bridge, phase, request, body, secs(stall)).await? {
        Outcome::Continue(c) => Some(Decision::Proceed(c)),
        Outcome::Respond {
            status,
            headers,
            body: payload,
            debug,
        } => Some(Decision::Answer(
            plugins::response(status, headers, payload),
            debug,
        )),
        _ => None,
    }
}

fn internal_error() -> Response<ResponseBody> {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The variables a limiter key can name: the request's, plus the route's and consumer's.
struct LimitVars<'a> {
    view: &'a RequestView<'a>,
    route: &'a RouteEntry,
    consumer: Option<&'a str>,
}

impl<'a> LimitVars<'a> {
    fn new(view: &'a RequestView<'a>, route: &'a RouteEntry, consumer: Option<&'a str>) -> Self {
        LimitVars {
            view,
            route,
            consumer,
        }
    }
}

impl RequestVars for LimitVars<'_> {
    fn method(&self) -> &str {
        self.view.method()
    }
    fn host(&self) -> &str {
        self.view.host()
    }
    fn path(&self) -> &str {
        self.view.path()
    }
    fn remote_addr(&self) -> Option<std::net::IpAddr> {
        self.view.remote_addr()
    }
    fn var(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow::Borrowed;
        match name {
            "route_id" => Some(Borrowed(&self.route.id)),
            "service_id" => self.route.service_id.as_deref().map(Borrowed),
            "consumer_name" => self.consumer.map(Borrowed),
            _ => self.view.var(name),
        }
    }
}

/// The answer to a request a limiter turned away (or could not check).
fn refused(r: limit::Refusal, debug: bool) -> Response<ResponseBody> {
    // Without rejected_msg APISIX exits with the bare status: nginx's error page.
    let mut resp = match &r.msg {
        Some(msg) => json_error(r.status, msg),
        None => html_error(r.status),
    };
    for (k, v) in r.headers {
        resp.headers_mut().append(k, v);
    }
    if debug {
        plugins::set_debug(&mut resp, Some("no plugin"));
    }
    resp
}

/// Quota headers on the response; limit-conn slots held until the body is done.
fn limited(resp: &mut Response<ResponseBody>, a: limit::Admitted) {
    for (k, v) in a.headers {
        resp.headers_mut().append(k, v);
    }
    if !a.guards.is_empty() {
        resp.body_mut().hold(a.guards);
    }
}

struct Forward {
    client: std::net::IpAddr,
    /// The Host for `pass_host: pass`: the client's, or what a plugin set (`ctx.host`).
    host_header: Option<HeaderValue>,
    /// `X-Forwarded-Host`: the client's Host, whatever plugins do (APISIX).
    forwarded_host: Option<HeaderValue>,
    route: Arc<RouteEntry>,
}

/// How one upstream attempt failed.
enum Failure {
    /// Connect or exchange error before response headers → 502; may be retried.
    Bad(String),
    /// Connect, send or read timeout → 504; may be retried.
    Timeout(String),
    /// Failed after the request could no longer be sent again (its body is consumed, or a
    /// non-idempotent request went out) → 502, no retry.
    Spent(String),
    /// A timeout in the same situation → 504, no retry.
    SpentTimeout(String),
    /// The client's body failed: 400, or 408 when it stalled; no retry.
    Client(StatusCode, String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Bad(m)
            | Failure::Timeout(m)
            | Failure::Spent(m)
            | Failure::SpentTimeout(m)
            | Failure::Client(_, m) => m,
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, Failure::Bad(_) | Failure::Timeout(_))
    }

    fn status(&self) -> StatusCode {
        match self {
            Failure::Bad(_) | Failure::Spent(_) => StatusCode::BAD_GATEWAY,
            Failure::Timeout(_) | Failure::SpentTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Client(s, _) => *s,
        }
    }
}

impl Forward {
    async fn proxy(
        self,
        conn: &ConnInfo,
        mut parts: Parts,
        mut body: RequestBody,
        changes: Option<Changes>,
    ) -> Response<ResponseBody> {
        let conn_info = conn; // `conn` names each upstream connection below
                              // As APISIX: an upstream_id that names nothing is 502, a route without any upstream
                              // 503 ("missing upstream configuration in Route or Service").
        let Some(slot) = self.route.upstream.as_ref() else {
            log::warn!("route {}: no upstream configured", self.route.id);
            return html_error(StatusCode::SERVICE_UNAVAILABLE);
        };
        let Some(upstream) = slot.load_full() else {
            log::warn!("route {}: its upstream does not exist", self.route.id);
            return html_error(StatusCode::BAD_GATEWAY);
        };
        if upstream.balancer.is_empty() {
            // APISIX: "no valid upstream node", 503.
            log::warn!(
                "route {}: upstream {} has no node",
                self.route.id,
                upstream.key
            );
            return html_error(StatusCode::SERVICE_UNAVAILABLE);
        }
        let timeouts = self.route.timeout.or(upstream.timeouts).unwrap_or_default();
        // enable_websocket: the client's Upgrade goes on (nginx: `Upgrade $http_upgrade`,
        // `Connection upgrade`) and a 101 answer turns the connection into a tunnel.
        let upgrade = match self.route.websocket {
            true => upgrade_request(&mut parts),
            false => None,
        };
        prepare_upstream_head(&mut parts, &self, conn);
        if let Some((protocol, _)) = &upgrade {
            parts.headers.insert(header::UPGRADE, protocol.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // Framing follows the client's own request, whatever plugins do to headers.
        let mut chunked = body.is_some() && !parts.headers.contains_key(header::CONTENT_LENGTH);
        if chunked {
            // nginx (`proxy_request_buffering on`, APISIX's default) reads a chunked body
            // whole and sends it with a length; up to CHUNKED_BUFFER_LIMIT here, and a
            // larger one streams on chunked.
            match body.buffer(CHUNKED_BUFFER_LIMIT, secs(timeouts.read)).await {
                Ok(Some(whole)) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
                    chunked = false;
                }
                Ok(None) => {}
                Err(e) => {
                    log::info!("route {}: {e}", self.route.id);
                    let status = if e == STALLED {
                        StatusCode::REQUEST_TIMEOUT
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    let mut page = html_error(status);
                    page.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return page;
                }
            }
        }
        if let Some(c) = &changes {
            plugins::apply_headers(&mut parts.headers, c);
        }
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let deadline = upstream.retry_timeout.map(|t| Instant::now() + t);
        let mut tried: Vec<usize> = Vec::new();
        let mut last = Failure::Bad("no node tried".into());
        // nginx's $upstream_status: one status per try, what X-APISIX-Upstream-Status shows.
        let mut statuses: Vec<u16> = Vec::new();
        while let Some(idx) = upstream.balancer.pick(&tried) {
            tried.push(idx);
            let node = &upstream.nodes[idx];
            set_upstream_host(&mut parts, &upstream, node, self.host_header.as_ref());
            let req = Outgoing {
                method: &parts.method,
                target: &target,
                headers: &parts.headers,
                chunked,
                upgrade: upgrade.is_some(),
            };
            match exchange(node, &req, &mut body, &timeouts).await {
                Ok((head, conn)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    let on_upgrade = upgrade.map(|(_, on)| on);
                    let tracked = conn_info.drain.track();
                    return switch(
                        head,
                        conn,
                        on_upgrade,
                        secs(timeouts.read),
                        &self.route.id,
                        tracked,
                    );
                }
                Ok((head, conn)) => return respond(head, conn, node, &timeouts, &statuses),
                Err(failure) => {
                    log::warn!(
                        "route {}: upstream {} node {}:{}: {}",
                        self.route.id,
                        upstream.key,
                        node.host,
                        node.port,
                        failure.message()
                    );
                    let spent = !failure.retryable();
                    statuses.push(failure.status().as_u16());
                    last = failure;
                    let tries_left = tried.len() <= upstream.retries as usize;
                    if spent || !tries_left {
                        break;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        // APISIX: a retry past retry_timeout is refused with 502.
                        last = Failure::Spent("proxy retry timeout".into());
                        break;
                    }
                }
            }
        }
        let mut page = html_error(last.status());
        if let Some(v) = upstream_status(&statuses, None) {
            page.headers_mut().insert(UPSTREAM_STATUS, v);
        }
        page
    }
}

const UPSTREAM_STATUS: HeaderName = HeaderName::from_static("x-apisix-upstream-status");

/// `X-APISIX-Upstream-Status` as APISIX sets it: nginx's `$upstream_status` (every try,
/// `"502, 502, 503"`) when the last one is a 5xx, else nothing.
fn upstream_status(failed: &[u16], last: Option<u16>) -> Option<HeaderValue> {
    // Checked before anything is built: the common response (no failed try, not a 5xx)
    // allocates nothing.
    let final_status = last.or_else(|| failed.last().copied())?;
    if !(500..600).contains(&final_status) {
        return None;
    }
    let text: Vec<String> = failed.iter().chain(&last).map(u16::to_string).collect();
    HeaderValue::from_str(&text.join(", ")).ok()
}

/// The request head as it goes upstream.
struct Outgoing<'a> {
    method: &'a http::Method,
    target: &'a str,
    headers: &'a HeaderMap,
    chunked: bool,
    /// A protocol upgrade is asked for: a 101 is an answer, not an error.
    upgrade: bool,
}

/// One try against one node. The client body is taken only once it starts going out, so
/// a failure before that leaves the request retryable.
async fn exchange(
    node: &Node,
    req: &Outgoing<'_>,
    body: &mut RequestBody,
    timeouts: &Timeouts,
) -> Result<(ResponseHead, Conn), Failure> {
    // A pooled connection may have been closed by the upstream while idle: a failure on it
    // before any response byte is retried once on a fresh connection when nothing of the
    // body was consumed; it does not count as a try.
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            node.pool.checkout()
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let addr = match tokio::time::timeout(secs(timeouts.connect), node.resolve()).await
                {
                    Ok(resolved) => resolved.map_err(Failure::Bad)?,
                    Err(_) => return Err(Failure::Timeout("name resolution timed out".into())),
                };
                match pool::connect(addr, secs(timeouts.connect)).await {
                    Ok(c) => c,
                    Err(ConnectError::Timeout) => {
                        return Err(Failure::Timeout("connect timed out".into()))
                    }
                    Err(ConnectError::Failed(e)) => {
                        return Err(Failure::Bad(format!("connect failed: {e}")))
                    }
                }
            }
        };
        let send = secs(timeouts.send);
        let head_sent = AtomicBool::new(false);
        let body_taken = AtomicBool::new(false);
        let result = async {
            timed(
                send,
                conn.conn
                    .write_head(req.method, req.target, req.headers, req.chunked),
            )
            .await?;
            head_sent.store(true, Relaxed);
            if let RequestBody::Buffered(data) = &*body {
                // Read whole by a plugin: sent as is, and again on a retry.
                let data = data.clone();
                timed(send, conn.conn.write_body(&data, req.chunked)).await?;
                if req.chunked {
                    timed(send, conn.conn.finish_chunked()).await?;
                }
            } else if let Some((read, mut b)) = match std::mem::replace(body, RequestBody::None) {
                RequestBody::Stream(b) => Some((None, b)),
                RequestBody::Partial(read, b) => Some((Some(read), b)),
                _ => None,
            } {
                body_taken.store(true, Relaxed);
                if let Some(read) = read {
                    // What a plugin read before finding the body too large goes first.
                    timed(send, conn.conn.write_body(&read, req.chunked)).await?;
                }
                // A client that stops sending its body is cut off like nginx's
                // client_body_timeout (here: the read timeout of the route/upstream).
                let stall = secs(timeouts.read);
                loop {
                    let frame = match tokio::time::timeout(stall, b.frame()).await {
                        Err(_) => return Err(SendFailure::ClientTimeout),
                        Ok(None) => break,
                        Ok(Some(f)) => f.map_err(|e| SendFailure::Client(e.to_string()))?,
                    };
                    if let Ok(data) = frame.into_data() {
                        timed(send, conn.conn.write_body(&data, req.chunked)).await?;
                    }
                }
                if req.chunked {
                    timed(send, conn.conn.finish_chunked()).await?;
                }
            }
            match tokio::time::timeout(
                secs(timeouts.read),
                conn.conn.read_head(req.method, req.upgrade),
            )
            .await
            {
                Err(_) => Err(SendFailure::Timeout("read timed out")),
                Ok(Ok(head)) => Ok(head),
                Ok(Err(ExchangeError::ClosedEarly)) => Err(SendFailure::Stale),
                Ok(Err(e)) => Err(SendFailure::Upstream(e.to_string())),
            }
        }
        .await;
        // Sending again is safe only if nothing of the body is gone and, once the head went
        // out, only for idempotent methods (nginx's proxy_next_upstream rule).
        let resendable =
            !body_taken.load(Relaxed) && (!head_sent.load(Relaxed) || idempotent(req.method));
        return match result {
            Ok(head) => Ok((head, conn)),
            Err(SendFailure::Stale) if conn.reused && !body_taken.load(Relaxed) => {
                fresh_only = true;
                continue;
            }
            Err(SendFailure::Stale) if resendable => {
                Err(Failure::Bad("upstream closed the connection".into()))
            }
            Err(SendFailure::Stale) => Err(Failure::Spent("upstream closed the connection".into())),
            Err(SendFailure::Timeout(m)) if resendable => Err(Failure::Timeout(m.into())),
            Err(SendFailure::Timeout(m)) => Err(Failure::SpentTimeout(m.into())),
            Err(SendFailure::ClientTimeout) => Err(Failure::Client(
                StatusCode::REQUEST_TIMEOUT,
                "client stopped sending its body".into(),
            )),
            Err(SendFailure::Client(m)) => Err(Failure::Client(
                StatusCode::BAD_REQUEST,
                format!("client body: {m}"),
            )),
            Err(SendFailure::Upstream(m)) if resendable => Err(Failure::Bad(m)),
            Err(SendFailure::Upstream(m)) => Err(Failure::Spent(m)),
        };
    }
}

fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

/// Failures inside one exchange, before they are mapped to a [`Failure`].
enum SendFailure {
    /// Closed before any response byte.
    Stale,
    /// Send or read timeout.
    Timeout(&'static str),
    /// The client's body failed (client went away).
    Client(String),
    /// The client stalled while sending its body.
    ClientTimeout,
    /// Any other upstream error.
    Upstream(String),
}

async fn timed<F: std::future::Future<Output = std::io::Result<()>>>(
    limit: Duration,
    f: F,
) -> Result<(), SendFailure> {
    match tokio::time::timeout(limit, f).await {
        Err(_) => Err(SendFailure::Timeout("send timed out")),
        Ok(Err(e)) if is_closed(&e) => Err(SendFailure::Stale),
        Ok(Err(e)) => Err(SendFailure::Upstream(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// The protocol a client asks to switch to (`Upgrade`, with `upgrade` among its
/// `Connection` tokens), and hyper's handle on the connection once it is switched.
fn upgrade_request(parts: &mut Parts) -> Option<(HeaderValue, OnUpgrade)> {
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    let asked = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asked {
        return None;
    }
    let on = parts.extensions.remove::<OnUpgrade>()?;
    Some((protocol, on))
}

/// The upstream switched protocols: the client gets its 101 (the upstream's headers, such
/// as `Sec-WebSocket-Accept`), and once hyper hands the client connection over, bytes are
/// copied both ways until both sides close or nothing moves for `idle` (the read timeout,
/// as nginx's `proxy_read_timeout` closes an idle tunnel).
fn switch(
    head: ResponseHead,
    conn: Conn,
    on_upgrade: Option<OnUpgrade>,
    idle: Duration,
    route: &Arc<str>,
    tracked: Tracked,
) -> Response<ResponseBody> {
    let Some(on_upgrade) = on_upgrade else {
        return html_error(StatusCode::BAD_GATEWAY);
    };
    let mut headers = head.headers;
    strip_nginx_hidden(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    let (upstream, early) = conn.conn.into_parts();
    let route = route.clone();
    let life = Arc::new(TunnelLife::default());
    let held = life.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(client) => {
                if let Err(e) = tunnel(TokioIo::new(client), upstream, early, idle).await {
                    log::debug!("route {route}: tunnel closed: {e}");
                }
            }
            Err(e) => log::info!("route {route}: the client connection was not upgraded: {e}"),
        }
        drop(held); // limit-conn slots and the log phase end with the tunnel
        drop(tracked);
    });
    let mut r = Response::new(ResponseBody::Switched(life));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = headers;
    r
}

/// Copies both ways between an upgraded client connection and the upstream, each direction
/// on its own (a side that stops reading stalls only what goes to it): each side's end of
/// stream is passed on as a write shutdown; done when both ended, on an error, or once no
/// byte has moved either way for `idle` (a write stuck on a peer that reads nothing
/// included).
async fn tunnel<C>(
    client: C,
    mut upstream: TcpStream,
    early: BytesMut,
    idle: Duration,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let moved = Moved::new();
    let up = async { pipe(&mut client_read, &mut upstream_write, &[], &moved).await };
    let down = async {
        // What the upstream sent right after its 101 (a first frame) goes first.
        pipe(&mut upstream_read, &mut client_write, &early, &moved).await
    };
    let watchdog = async {
        loop {
            let due = moved.last() + idle;
            if due <= Instant::now() {
                return std::io::Error::new(std::io::ErrorKind::TimedOut, "idle");
            }
            tokio::time::sleep_until(due.into()).await;
        }
    };
    tokio::select! {
        done = async { tokio::try_join!(up, down) } => done.map(|_| ()),
        timeout = watchdog => Err(timeout),
    }
}

/// One direction of a tunnel: `first`, then what `from` reads, into `to`, until `from` ends
/// (then `to` is shut down for writing); `moved` is stamped at each read and write.
async fn pipe<R, W>(from: &mut R, to: &mut W, first: &[u8], moved: &Moved) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        to.write_all(first).await?;
        moved.stamp();
    }
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        moved.stamp();
        to.write_all(&buf[..n]).await?;
        moved.stamp();
    }
}

/// When a tunnel last moved a byte (the two directions stamp it, its watchdog reads it).
struct Moved {
    since: Instant,
    nanos: std::sync::atomic::AtomicU64,
}

impl Moved {
    fn new() -> Self {
        Moved {
            since: Instant::now(),
            nanos: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn stamp(&self) {
        let n = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(n, Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_nanos(self.nanos.load(Relaxed))
    }
}

/// Bytes read at once from either side of a tunnel.
const TUNNEL_BUFFER: usize = 16 * 1024;

fn respond(
    head: ResponseHead,
    conn: Conn,
    node: &Node,
    timeouts: &Timeouts,
    failed: &[u16],
) -> Response<ResponseBody> {
    let mut headers = head.headers;
    strip_hop_by_hop(&mut headers);
    strip_nginx_hidden(&mut headers);
    match head.framing {
        // The length (if any) is not what the body will be: the client gets chunked.
        Framing::Chunked | Framing::Close => {
            headers.remove(header::CONTENT_LENGTH);
        }
        // One canonical value, never an upstream's list such as "2, 2".
        Framing::Length(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Empty => {}
    }
    let status = head.status;
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    if let Some(v) = upstream_status(failed, Some(status.as_u16())) {
        headers.insert(UPSTREAM_STATUS, v);
    }
    let reader = BodyReader::new(conn.conn, head.framing, head.reusable);
    let body = UpstreamBody::new(
        reader,
        PoolReturn {
            pool: node.pool.clone(),
            served: conn.served + 1,
        },
        secs(timeouts.read),
    );
    let mut r = Response::new(ResponseBody::Upstream(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    if let Some(reason) = head.reason {
        // hyper would write "<none>" for a code it has no phrase for.
        if let Ok(phrase) = ReasonPhrase::try_from(reason) {
            r.extensions_mut().insert(phrase);
        }
    }
    r
}

fn secs(s: f64) -> Duration {
    seconds(s.max(0.001))
}

/// The largest chunked client body read whole to be sent with a `Content-Length`, as nginx
/// sends every body (it spools larger ones to disk; a larger one streams on chunked here).
pub const CHUNKED_BUFFER_LIMIT: usize = 1 << 20;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names beats nine hashed removals.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        // Never let a client strip the headers the gateway itself sets.
        if n != header::HOST {
            headers.remove(&n);
        }
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

/// What nginx's `proxy_hide_header` hides from upstream responses by default: `X-Pad` and
/// the `X-Accel-*` controls meant for nginx itself (APISIX relays neither).
const NGINX_HIDDEN: [&str; 6] = [
    "x-pad",
    "x-accel-expires",
    "x-accel-redirect",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
];

fn strip_nginx_hidden(headers: &mut HeaderMap) {
    // Almost no response carries one: a scan of the names before any removal.
    if !headers.keys().any(|k| {
        let n = k.as_str();
        n.starts_with("x-accel-") || n == "x-pad"
    }) {
        return;
    }
    for n in NGINX_HIDDEN {
        headers.remove(n);
    }
}

fn prepare_upstream_head(parts: &mut Parts, fwd: &Forward, conn: &ConnInfo) {
    // Origin-form target: the client's path and query as received.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    let trusted_peer = conn.trusted;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::PROXY_AUTHORIZATION);
    // The gateway answers `Expect: 100-continue` itself (hyper does, when the body is read).
    headers.remove(header::EXPECT);
    let xff = match (trusted_peer, headers.get("x-forwarded-for")) {
        (true, Some(prev)) => {
            let mut v = prev.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.peer_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.peer_ip.clone())
        }
        _ => conn.peer_ip.clone(),
    };
    headers.insert(HeaderName::from_static("x-forwarded-for"), xff);
    let real_ip = if fwd.client == conn.peer.ip() {
        conn.peer_ip.clone()
    } else {
        HeaderValue::from_str(&fwd.client.to_string()).unwrap_or_else(|_| conn.peer_ip.clone())
    };
    headers.insert(HeaderName::from_static("x-real-ip"), real_ip);
    let keep = |headers: &HeaderMap, name: &str| trusted_peer && headers.contains_key(name);
    if !keep(headers, "x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    if !keep(headers, "x-forwarded-host") {
        match &fwd.forwarded_host {
            Some(h) => {
                headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
            }
            None => {
                headers.remove("x-forwarded-host");
            }
        }
    }
    if !keep(headers, "x-forwarded-port") {
        let port = match fwd
            .forwarded_host
            .as_ref()
            .and_then(|h| host_port(h.as_bytes()))
        {
            // Usually the listener's own port: its shared value, no allocation.
            Some(p) if p != conn.local_port.as_bytes() => {
                HeaderValue::from_bytes(p).unwrap_or_else(|_| conn.local_port.clone())
            }
            _ => conn.local_port.clone(),
        };
        headers.insert(HeaderName::from_static("x-forwarded-port"), port);
    }
    // RFC 7239's header carries the same claims: only a trusted peer's reaches the upstream
    // (APISIX clears it for everyone else).
    if !trusted_peer {
        headers.remove(header::FORWARDED);
    }
}

/// An untrusted peer's forwarding claims, as APISIX leaves them before routing (so route
/// `vars`, plugins and the upstream never see them): its `X-Forwarded-For` and `Forwarded`
/// are dropped, and the `X-Forwarded-Proto`, `-Host` and `-Port` it sent are replaced by what
/// the gateway observed.
fn hide_claims(headers: &mut HeaderMap, conn: &ConnInfo) {
    // Most requests carry none: one pass over the names before any lookup.
    if !headers.keys().any(|k| {
        let n = k.as_str();
        n.starts_with("x-forwarded-") || n == "forwarded"
    }) {
        return;
    }
    headers.remove("x-forwarded-for");
    headers.remove(header::FORWARDED);
    if headers.contains_key("x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    let host = headers.get(header::HOST).cloned();
    if headers.contains_key("x-forwarded-host") {
        match &host {
            Some(h) => {
                headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
            }
            None => {
                headers.remove("x-forwarded-host");
            }
        }
    }
    if headers.contains_key("x-forwarded-port") {
        let port = host
            .as_ref()
            .and_then(|h| host_port(h.as_bytes()))
            .and_then(|p| HeaderValue::from_bytes(p).ok())
            .unwrap_or_else(|| conn.local_port.clone());
        headers.insert(HeaderName::from_static("x-forwarded-port"), port);
    }
}

/// The port at the end of a Host header (`name:8443`, `[::1]:8443`), as APISIX's
/// `X-Forwarded-Port` takes it before falling back to the listener's port.
fn host_port(host: &[u8]) -> Option<&[u8]> {
    let colon = host.iter().rposition(|&b| b == b':')?;
    let digits = &host[colon + 1..];
    (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit)).then_some(digits)
}

fn set_upstream_host(
    parts: &mut Parts,
    up: &Upstream,
    node: &Node,
    client_host: Option<&HeaderValue>,
) {
    let host = match up.pass_host {
        PassHost::Pass => client_host.cloned(),
        PassHost::Node => None,
        PassHost::Rewrite => up.upstream_host.clone(),
    };
    parts.headers.insert(
        header::HOST,
        host.unwrap_or_else(|| node.host_header.clone()),
    );
}

/// `{"error_msg": ...}` with APISIX's trailing newline.
pub fn json_error(status: StatusCode, msg: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error_msg": msg }).to_string() + "\n";
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    r
}

/// nginx-style error page, as APISIX answers proxy failures.
pub fn html_error(status: StatusCode) -> Response<ResponseBody> {
    let reason = match status.as_u16() {
        // nginx's wording (ngx_http_special_response.c) where it differs from the registry's.
        401 => "Authorization Required",
        405 => "Not Allowed",
        408 => "Request Time-out",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        416 => "Requested Range Not Satisfiable",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => status.canonical_reason().unwrap_or(""),
    };
    let line = format!("{} {reason}", status.as_u16());
    let body = format!(
        "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::SERVER, HeaderValue::from_static(SERVER));
    r
}

fn bad_request(e: BadRequest) -> Response<ResponseBody> {
    log::info!("bad request: {e:?}");
    let mut r = html_error(match e {
        BadRequest::Coding => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::BAD_REQUEST,
    });
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback pair: (the tunnel's upstream side, the origin's side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn tunnel_copies_both_ways_early_bytes_first_and_ends_with_both_sides() {
        let (upstream, mut origin) = tcp_pair().await;
        let (client, mut user) = tokio::io::duplex(1024);
        let task = tokio::spawn(tunnel(
            client,
            upstream,
            BytesMut::from(&b"hi"[..]),
            Duration::from_secs(5),
        ));
        let mut got = [0u8; 2];
        user.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        user.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        origin.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        origin.write_all(b"pong").await.unwrap();
        user.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");
        user.shutdown().await.unwrap(); // the client's end reaches the origin as EOF
        assert_eq!(origin.read(&mut four).await.unwrap(), 0);
        origin.write_all(b"late").await.unwrap(); // half-closed: the other way still works
        user.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"late");
        drop(origin);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_stalls_one_direction_until_the_idle_timeout() {
        let (upstream, mut origin) = tcp_pair().await;
        let (client, mut user) = tokio::io::duplex(64);
        let task = tokio::spawn(tunnel(
            client,
            upstream,
            BytesMut::new(),
            Duration::from_millis(300),
        ));
        // The origin floods a client that never reads; the client's bytes still go up.
        let flood = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..64 {
                if origin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            origin
        });
        user.write_all(b"up").await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(10), task).await;
        let err = done.expect("the tunnel hung").unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(flood.await.unwrap());
    }

    #[test]
    fn host_port_is_the_trailing_digits_of_the_host_header() {
        assert_eq!(host_port(b"example.com:8443"), Some(&b"8443"[..]));
        assert_eq!(host_port(b"[::1]:80"), Some(&b"80"[..]));
        assert_eq!(host_port(b"[::1]"), None);
        assert_eq!(host_port(b"example.com"), None);
        assert_eq!(host_port(b"example.com:"), None);
    }

    #[test]
    fn upstream_status_lists_every_try_when_the_last_is_a_5xx() {
        let v = |f: &[u16], l| upstream_status(f, l).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(v(&[502, 502, 502], None).as_deref(), Some("502, 502, 502"));
        assert_eq!(v(&[502], Some(503)).as_deref(), Some("502, 503"));
        assert_eq!(v(&[], Some(500)).as_deref(), Some("500"));
        assert_eq!(
            v(&[502], Some(200)),
            None,
            "a retry that succeeded shows nothing"
        );
        assert_eq!(v(&[], Some(404)), None);
        assert_eq!(v(&[], None), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, X-Secret, host".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TE).is_none());
        assert_eq!(h.get(header::HOST).unwrap(), "a");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn not_found_body_is_apisix_wording() {
        let r = json_error(StatusCode::NOT_FOUND, "404 Route Not Found");
        match r.into_body() {
            ResponseBody::Full(Some(b)) => {
                assert_eq!(&b[..], b"{\"error_msg\":\"404 Route Not Found\"}\n")
            }
            _ => panic!("expected a full body"),
        }
    }
}
