//! The data plane's side of Python plugin crossings: build what plugins see, wait for their
//! decision without blocking the worker, apply it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri};
use hyper::ext::ReasonPhrase;
use tokio::sync::oneshot;

use super::body::{FilteredBody, RequestBody, ResponseBody};
use super::proxy::{RouteEntry, SERVER};
use super::request::RequestView;
use crate::pipeline::{Bridge, Changes, Job, Outcome, Phase, Reply, RequestData, ResponseData};
use crate::router::Matched;

/// The route has plugins with rewrite / access / before_proxy.
pub const REQUEST: u8 = 1;
/// The route has plugins with header_filter.
pub const HEADER: u8 = 2;
/// The route has plugins with log.
pub const LOG: u8 = 4;
/// The route has plugins with body_filter.
pub const BODY: u8 = 8;
/// The route's request plugins all run after its native limiters: no first crossing, only
/// the late one.
pub const LATE: u8 = 16;

/// Phase names from the control plane → the crossing bits.
pub fn phase_bits(names: &[String]) -> u8 {
    let bits = names.iter().fold(0, |bits, n| {
        bits | match n.as_str() {
            "rewrite" | "access" | "before_proxy" => REQUEST,
            "header_filter" => HEADER,
            "body_filter" => BODY,
            "log" => LOG,
            "late" => LATE,
            _ => 0,
        }
    });
    // The runner keeps a request's plugin run for its response phases; the log crossing
    // (even with no log plugin) is what lets it go.
    if bits & (HEADER | BODY) != 0 {
        bits | LOG
    } else {
        bits
    }
}

/// What plugins see of the request; made once per request, only for plugin routes.
///
/// As in APISIX (which overwrites the inbound header with `$scheme` unless the peer is one
/// of its `trusted_addresses`), `X-Forwarded-Proto` is the gateway's own scheme unless
/// `trusted_peer`: a client cannot make a plugin (`redirect`'s `http_to_https`) believe it
/// came over https.
pub fn request_data(
    bridge: &Bridge,
    parts: &Parts,
    view: &RequestView<'_>,
    m: &Matched<RouteEntry>,
    trusted_peer: bool,
) -> Arc<RequestData> {
    let mut headers = parts.headers.clone();
    if !trusted_peer {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    Arc::new(RequestData {
        id: bridge.next_request_id(),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        path: view.path.to_string(),
        headers,
        host: view.host.to_string(),
        client: view.client,
        peer: view.peer,
        local: view.local,
        route_id: m.route_id.clone(),
        params: m.params.clone(),
    })
}

/// Hands one phase to the Python runner and waits for its outcome. The runner answers or
/// drops every job: an async phase that overruns gets the plugin timeout (504), and a sync
/// plugin that blocks has its jobs dropped by the bridge's watchdog
/// ([`Bridge::watch`](crate::pipeline::Bridge::watch)); no timer per crossing.
pub async fn cross(
    bridge: &Bridge,
    phase: Phase,
    request: &Arc<RequestData>,
    response: Option<ResponseData>,
) -> Option<Outcome> {
    let (reply, rx) = Reply::channel();
    bridge.submit(Job {
        phase,
        request: request.clone(),
        response,
        reply: Some(reply),
        chunk: None,
    });
    finish(phase, rx.await)
}

/// A request crossing ([`Phase::Request`] or [`Phase::Late`]): while plugins run, serves
/// their requests for the client body (buffered once, then also what goes upstream).
pub async fn cross_request(
    bridge: &Bridge,
    phase: Phase,
    request: &Arc<RequestData>,
    body: &mut RequestBody,
    read_timeout: Duration,
) -> Option<Outcome> {
    let (reply, mut rx) = Reply::channel();
    bridge.submit(Job {
        phase,
        request: request.clone(),
        response: None,
        reply: Some(reply),
        chunk: None,
    });
    loop {
        match (&mut rx).await {
            Ok(Outcome::NeedBody { limit, reply, next }) => {
                let _ = reply.send(body.buffer(limit, read_timeout).await);
                rx = next;
            }
            got => return finish(phase, got),
        }
    }
}

fn finish(phase: Phase, got: Result<Outcome, oneshot::error::RecvError>) -> Option<Outcome> {
    match got {
        Ok(Outcome::NeedBody { .. }) => {
            log::error!("a {} job asked for the request body", phase.name());
            None
        }
        Ok(outcome) => Some(outcome),
        Err(_) => {
            log::error!("plugin runner dropped a {} job", phase.name());
            None
        }
    }
}

/// Runs the response body through the plugins' body_filter, one crossing per chunk.
pub fn filter_body(
    bridge: &Arc<Bridge>,
    request: &Arc<RequestData>,
    resp: &mut Response<ResponseBody>,
) {
    // The body may change size: the client gets it chunked.
    resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    let inner = std::mem::replace(resp.body_mut(), ResponseBody::empty());
    *resp.body_mut() = ResponseBody::Filtered(Box::new(FilteredBody::new(
        inner,
        bridge.clone(),
        request.clone(),
    )));
}

/// Tells the runner a request that asked for a late crossing will not have one (a limiter
/// refused it): it forgets the plugin run it kept.
pub fn cancel_late(bridge: &Bridge, request: &Arc<RequestData>) {
    bridge.submit(Job {
        phase: Phase::Late,
        request: request.clone(),
        response: None,
        reply: None,
        chunk: None,
    });
}

/// Sends the log phase once the response is complete (or now, for a response made here).
pub fn log_after(
    bridge: &Arc<Bridge>,
    request: &Arc<RequestData>,
    resp: &mut Response<ResponseBody>,
) {
    let job = Job {
        phase: Phase::Log,
        request: request.clone(),
        response: Some(ResponseData {
            status: resp.status(),
            headers: resp.headers().clone(),
        }),
        reply: None,
        chunk: None,
    };
    match resp.body_mut() {
        ResponseBody::Upstream(u) => u.on_end(bridge.clone(), job),
        ResponseBody::Filtered(f) => f.on_end(bridge.clone(), job),
        ResponseBody::Full(_) => bridge.submit(job),
        ResponseBody::Switched(t) => t.on_end(bridge.clone(), job),
    }
}

/// Method and target changes (before the upstream head is prepared).
pub fn apply(parts: &mut Parts, c: &Changes) {
    if let Some(m) = c
        .method
        .as_deref()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    {
        parts.method = m;
    }
    if let Some(u) = c.uri.as_deref().and_then(|u| Uri::try_from(u).ok()) {
        parts.uri = u;
    }
}

/// Headers that frame a message or describe a connection: the gateway owns them, plugins
/// cannot set or remove them (they would desynchronise client or upstream: smuggling).
fn framing_header(n: &HeaderName) -> bool {
    use http::header;
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::HOST,
    ]
    .contains(n)
        || n.as_str() == "keep-alive"
        || n.as_str() == "proxy-connection"
}

/// Header changes, on the prepared upstream head.
pub fn apply_headers(headers: &mut HeaderMap, c: &Changes) {
    for name in &c.remove_headers {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            if !framing_header(&n) {
                headers.remove(n);
            }
        }
    }
    for (name, value) in &c.set_headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            if !framing_header(&n) {
                headers.insert(n, v);
            }
        }
    }
}

/// A response a plugin made.
pub fn response(
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::Full(Some(body)));
    set_status(
        &mut r,
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    append(r.headers_mut(), headers);
    r.headers_mut()
        .insert(http::header::SERVER, HeaderValue::from_static(SERVER));
    r
}

/// Replaces status and headers after header_filter; the body's framing stays the gateway's.
pub fn replace_head(
    resp: &mut Response<ResponseBody>,
    status: u16,
    headers: Vec<(String, String)>,
) {
    if let Ok(s) = StatusCode::from_u16(status) {
        if s != resp.status() {
            set_status(resp, s);
        }
    }
    let h = resp.headers_mut();
    let length = h.get(http::header::CONTENT_LENGTH).cloned();
    h.clear();
    append(h, headers);
    if let Some(l) = length {
        h.insert(http::header::CONTENT_LENGTH, l);
    }
}

/// Sets a status a plugin chose: the upstream's reason phrase (if relayed) no longer
/// applies, and a code without a canonical phrase gets an empty one (hyper would write
/// `<none>`), as the python engine's aiohttp does.
fn set_status(resp: &mut Response<ResponseBody>, status: StatusCode) {
    *resp.status_mut() = status;
    resp.extensions_mut().remove::<ReasonPhrase>();
    if status.canonical_reason().is_none() {
        resp.extensions_mut().insert(ReasonPhrase::from_static(b""));
    }
}

/// The `Apisix-Plugins` debug header.
pub fn set_debug(resp: &mut Response<ResponseBody>, debug: Option<&str>) {
    if let Some(v) = debug.and_then(|d| HeaderValue::from_str(d).ok()) {
        resp.headers_mut()
            .insert(HeaderName::from_static("apisix-plugins"), v);
    }
}

fn append(h: &mut HeaderMap, headers: Vec<(String, String)>) {
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            // hyper frames the body it is given; a plugin's length could split the response.
            if !framing_header(&n) || n == http::header::HOST {
                h.append(n, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_map_to_crossings() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(phase_bits(&names(&[])), 0);
        assert_eq!(phase_bits(&names(&["access", "rewrite"])), REQUEST);
        assert_eq!(phase_bits(&names(&["header_filter", "log"])), HEADER | LOG);
        assert_eq!(phase_bits(&names(&["late"])), LATE);
    }

    #[test]
    fn header_changes_set_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let c = Changes {
            set_headers: vec![
                ("X-New".into(), "v".into()),
                ("bad name".into(), "v".into()),
            ],
            remove_headers: vec!["x-drop".into()],
            ..Changes::default()
        };
        apply_headers(&mut h, &c);
        assert_eq!(h.get("x-new").unwrap(), "v");
        assert!(h.get("x-drop").is_none());
        assert_eq!(h.len(), 2);
        let framing = Changes {
            set_headers: vec![("Content-Length".into(), "3".into())],
            remove_headers: vec!["transfer-encoding".into()],
            ..Changes::default()
        };
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        apply_headers(&mut h, &framing);
        assert!(
            h.get("content-length").is_none(),
            "a plugin set the framing"
        );
        assert!(h.get("transfer-encoding").is_some());
    }
}
