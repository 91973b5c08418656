//! What the gateway derives from a request head before routing: the canonical path, the
//! host, the client address, and APISIX's request variables.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::header::{COOKIE, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderName, Version};

use crate::router::ipmatch::IpMatcher;
use crate::router::RequestVars;

/// Why a request head is refused with 400.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// No Host on HTTP/1.1, several Host headers, or an invalid one.
    Host,
    /// Absolute-form target whose authority disagrees with Host.
    HostMismatch,
    /// A path that cannot be made canonical (bad escape, NUL, `..` above the root).
    Path,
    /// Several `Transfer-Encoding` lines.
    Framing,
    /// A `Transfer-Encoding` other than `chunked` alone (nginx: 501, "unknown
    /// Transfer-Encoding"): a coding the gateway would drop on the way upstream.
    Coding,
}

/// The request as the router and plugins see it.
pub struct RequestView<'a> {
    /// The request head.
    pub parts: &'a Parts,
    /// Canonical path: percent-decoded, dot segments resolved, slashes merged.
    pub path: Cow<'a, str>,
    /// Lower-cased host without port.
    pub host: Cow<'a, str>,
    /// Client address: the peer, or from X-Forwarded-For when the peer is trusted.
    pub client: IpAddr,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The listener address the request came in on.
    pub local: SocketAddr,
}

impl<'a> RequestView<'a> {
    /// Derives the view; errors mean 400.
    pub fn new(
        parts: &'a Parts,
        peer: SocketAddr,
        local: SocketAddr,
        trusted: &IpMatcher,
    ) -> Result<Self, BadRequest> {
        let host = request_host(parts)?;
        let path = normalize_path(parts.uri.path()).ok_or(BadRequest::Path)?;
        let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
        if let Some(te) = codings.next() {
            if codings.next().is_some() {
                return Err(BadRequest::Framing);
            }
            // hyper took the body as chunked (its last coding); any other is not undone.
            if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadRequest::Coding);
            }
        }
        let client = client_addr(parts, peer.ip(), trusted);
        Ok(RequestView {
            parts,
            path,
            host,
            client,
            peer,
            local,
        })
    }

    /// The raw query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.parts.uri.query()
    }

    /// First value of a header by its `http_*` variable name (`x_api_key` → `x-api-key`).
    fn header_var(&self, name: &str) -> Option<Cow<'_, str>> {
        let wanted: String = name
            .bytes()
            .map(|b| match b {
                b'_' => '-',
                b => b.to_ascii_lowercase() as char,
            })
            .collect();
        let hn = HeaderName::from_bytes(wanted.as_bytes()).ok()?;
        let mut values = self.parts.headers.get_all(&hn).iter();
        let first = values.next()?;
        if hn == COOKIE {
            // nginx joins repeated Cookie headers with "; ".
            let mut all = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                all.push_str("; ");
                all.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            return Some(Cow::Owned(all));
        }
        Some(String::from_utf8_lossy(first.as_bytes()))
    }

    /// A query argument by name, as nginx's `$arg_*`: first match, case-insensitive, raw.
    fn arg_var(&self, name: &str) -> Option<Cow<'_, str>> {
        let q = self.query()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k.eq_ignore_ascii_case(name).then_some(Cow::Borrowed(v))
        })
    }

    fn cookie_var(&self, name: &str) -> Option<Cow<'_, str>> {
        for v in self.parts.headers.get_all(COOKIE) {
            let Ok(s) = v.to_str() else { continue };
            for c in s.split(';') {
                let (k, val) = c.trim().split_once('=').unwrap_or((c.trim(), ""));
                if k == name {
                    return Some(Cow::Owned(val.to_owned()));
                }
            }
        }
        None
    }

    /// The original request target (path and query as received).
    pub fn request_uri(&self) -> &str {
        self.parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
    }
}

impl RequestVars for RequestView<'_> {
    fn method(&self) -> &str {
        self.parts.method.as_str()
    }

    fn host(&self) -> &str {
        &self.host
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn remote_addr(&self) -> Option<IpAddr> {
        Some(self.client)
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(h) = name.strip_prefix("http_") {
            return self.header_var(h);
        }
        if let Some(a) = name.strip_prefix("arg_") {
            return self.arg_var(a);
        }
        if let Some(c) = name.strip_prefix("cookie_") {
            return self.cookie_var(c);
        }
        Some(match name {
            "uri" => Cow::Borrowed(self.path.as_ref()),
            "host" => Cow::Borrowed(self.host.as_ref()),
            "request_method" => Cow::Borrowed(self.parts.method.as_str()),
            "request_uri" => Cow::Borrowed(self.request_uri()),
            "query_string" | "args" => Cow::Borrowed(self.query()?),
            "is_args" => Cow::Borrowed(if self.query().is_some() { "?" } else { "" }),
            "remote_addr" => Cow::Owned(self.client.to_string()),
            "remote_port" => Cow::Owned(self.peer.port().to_string()),
            "realip_remote_addr" => Cow::Owned(self.peer.ip().to_string()),
            "server_addr" => Cow::Owned(self.local.ip().to_string()),
            "server_port" => Cow::Owned(self.local.port().to_string()),
            "scheme" => Cow::Borrowed("http"),
            "server_protocol" => Cow::Borrowed(match self.parts.version {
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            }),
            _ => return None,
        })
    }
}

/// The host used for routing: lower-cased, without port. HTTP/1.1 requires exactly one Host;
/// an absolute-form target must agree with it.
pub fn request_host(parts: &Parts) -> Result<Cow<'_, str>, BadRequest> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::Host);
    }
    let header = match header {
        Some(h) => Some(h.to_str().map_err(|_| BadRequest::Host)?),
        None => None,
    };
    let authority = parts.uri.authority().map(|a| a.as_str());
    let raw = match (authority, header) {
        (Some(a), Some(h)) => {
            if !a.eq_ignore_ascii_case(h) {
                return Err(BadRequest::HostMismatch);
            }
            a
        }
        (Some(a), None) => a,
        (None, Some(h)) => h,
        (None, None) if parts.version == Version::HTTP_10 => "",
        (None, None) => return Err(BadRequest::Host),
    };
    let name = strip_port(raw).ok_or(BadRequest::Host)?;
    // nginx's $host: one trailing dot dropped ("a.example.com." is a.example.com), and two
    // dots in a row refused.
    if name.contains("..") {
        return Err(BadRequest::Host);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(name))
    }
}

/// `host[:port]` or `[v6][:port]` → the host part, validated.
fn strip_port(raw: &str) -> Option<&str> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if valid_port(p) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'));
    ok.then_some(host)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The client address. X-Forwarded-For is believed only when the peer is a trusted proxy;
/// then it is walked right to left and the first untrusted hop is the client.
pub fn client_addr(parts: &Parts, peer: IpAddr, trusted: &IpMatcher) -> IpAddr {
    if !trusted.matches(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.matches(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Canonical form of a request path as nginx's `$uri`: percent-decoded, `.`/`..` resolved,
/// repeated slashes merged. `None` for a path that cannot be made canonical.
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        // Asterisk-form (`OPTIONS *`) is left as is; nothing routes it.
        return (raw == "*").then_some(Cow::Borrowed(raw));
    }
    let needs_work = bytes.contains(&b'%')
        || raw.contains("//")
        || raw.contains("/./")
        || raw.contains("/../")
        || raw.ends_with("/.")
        || raw.ends_with("/..");
    if !needs_work {
        return Some(Cow::Borrowed(raw));
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v == 0 {
                return None;
            }
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).ok()?;
    let mut segs: Vec<&str> = Vec::new();
    let trailing = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    for seg in text.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop()?;
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn normalize_keeps_clean_paths_borrowed() {
        assert!(matches!(
            normalize_path("/a/b/c"),
            Some(Cow::Borrowed("/a/b/c"))
        ));
    }

    #[test]
    fn normalize_resolves_dots_slashes_and_escapes() {
        assert_eq!(normalize_path("/info/../private").unwrap(), "/private");
        assert_eq!(normalize_path("//admin").unwrap(), "/admin");
        assert_eq!(normalize_path("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(normalize_path("/api/..%2f..%2fadmin"), None);
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/x%20y").unwrap(), "/x y");
    }

    #[test]
    fn normalize_rejects_bad_input() {
        assert_eq!(normalize_path("/../etc"), None);
        assert_eq!(normalize_path("/a%zz"), None);
        assert_eq!(normalize_path("/a%00b"), None);
        assert_eq!(normalize_path("/a%ff"), None);
        assert_eq!(normalize_path("/a%2"), None);
        assert_eq!(normalize_path("/a%+9"), None);
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let p = parts("/", &[("host", "Foo.COM:8080")]);
        assert_eq!(request_host(&p).unwrap(), "foo.com");
        let p = parts("/", &[("host", "[::1]:80")]);
        assert_eq!(request_host(&p).unwrap(), "[::1]");
        let p = parts("/", &[("host", "A.example.com.:80")]);
        assert_eq!(request_host(&p).unwrap(), "a.example.com");
    }

    #[test]
    fn bad_hosts_are_refused() {
        assert_eq!(request_host(&parts("/", &[])), Err(BadRequest::Host));
        assert_eq!(
            request_host(&parts("/", &[("host", "a b")])),
            Err(BadRequest::Host)
        );
        assert_eq!(
            request_host(&parts("/", &[("host", "a"), ("host", "b")])),
            Err(BadRequest::Host)
        );
        assert_eq!(
            request_host(&parts("http://a/x", &[("host", "b")])),
            Err(BadRequest::HostMismatch)
        );
        assert_eq!(
            request_host(&parts("/", &[("host", "a:x")])),
            Err(BadRequest::Host)
        );
        for bad in ["a..b", "a.."] {
            assert_eq!(
                request_host(&parts("/", &[("host", bad)])),
                Err(BadRequest::Host),
                "{bad}"
            );
        }
    }

    #[test]
    fn xff_is_ignored_from_untrusted_peers() {
        let p = parts("/", &[("x-forwarded-for", "1.2.3.4")]);
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_addr(&p, peer, &IpMatcher::default()), peer);
        let trusted = IpMatcher::new(&["192.168.0.0/16"]).unwrap();
        assert_eq!(client_addr(&p, peer, &trusted), peer);
    }

    #[test]
    fn xff_is_walked_right_to_left_from_trusted_peers() {
        let trusted = IpMatcher::new(&["10.0.0.0/8"]).unwrap();
        let p = parts(
            "/",
            &[
                ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
                ("x-forwarded-for", "10.1.1.1"),
            ],
        );
        let got = client_addr(&p, "10.0.0.9".parse().unwrap(), &trusted);
        assert_eq!(got, "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
