//! Router-level tests: one case per matching rule, updates and concurrency.

use super::*;
use serde_json::json;
use std::collections::HashMap;

#[derive(Default, Clone)]
struct Req {
    method: String,
    host: String,
    path: String,
    remote: Option<IpAddr>,
    vars: HashMap<String, String>,
}

impl RequestVars for Req {
    fn method(&self) -> &str {
        &self.method
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn remote_addr(&self) -> Option<IpAddr> {
        self.remote
    }
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "uri" => Some(Cow::Borrowed(&self.path)),
            "host" => Some(Cow::Borrowed(&self.host)),
            _ => self.vars.get(name).map(|v| Cow::Borrowed(v.as_str())),
        }
    }
}

fn get(path: &str) -> Req {
    Req {
        method: "GET".into(),
        path: path.into(),
        ..Req::default()
    }
}

impl Req {
    fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.remote = Some(ip.parse().unwrap());
        self
    }
    fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }
}

fn spec(id: &str, uris: &[&str]) -> RouteSpec {
    RouteSpec {
        id: id.into(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
        ..RouteSpec::default()
    }
}

trait SpecExt {
    fn hosts(self, h: &[&str]) -> Self;
    fn methods(self, m: &[&str]) -> Self;
    fn addrs(self, a: &[&str]) -> Self;
    fn vars(self, v: serde_json::Value) -> Self;
    fn prio(self, p: i64) -> Self;
    fn seq(self, s: u64) -> Self;
}

fn strings(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

impl SpecExt for RouteSpec {
    fn hosts(mut self, h: &[&str]) -> Self {
        self.hosts = strings(h);
        self
    }
    fn methods(mut self, m: &[&str]) -> Self {
        self.methods = strings(m);
        self
    }
    fn addrs(mut self, a: &[&str]) -> Self {
        self.remote_addrs = strings(a);
        self
    }
    fn vars(mut self, v: serde_json::Value) -> Self {
        self.vars = Some(v);
        self
    }
    fn prio(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }
    fn seq(mut self, s: u64) -> Self {
        self.seq = s;
        self
    }
}

fn router(specs: Vec<RouteSpec>) -> Router<String> {
    router_mode(PathMode::Plain, specs)
}

fn router_mode(mode: PathMode, specs: Vec<RouteSpec>) -> Router<String> {
    let r = Router::new(mode);
    for s in specs {
        let id = s.id.clone();
        r.upsert(s, Arc::new(id)).unwrap();
    }
    r
}

fn hit(r: &Router<String>, req: &Req) -> Option<String> {
    r.matches(req).map(|m| {
        assert_eq!(*m.payload, *m.route_id);
        m.route_id.to_string()
    })
}

fn id(r: &Router<String>, req: &Req) -> String {
    hit(r, req).unwrap_or_else(|| "<none>".into())
}

// --- URI rules --------------------------------------------------------------

#[test]
fn exact_beats_prefix_regardless_of_priority() {
    let r = router(vec![
        spec("prefix", &["/a/*"]).prio(100),
        spec("exact", &["/a/b"]),
    ]);
    assert_eq!(id(&r, &get("/a/b")), "exact");
    assert_eq!(id(&r, &get("/a/c")), "prefix");
    assert_eq!(id(&r, &get("/a/b/c")), "prefix");
}

#[test]
fn star_forms() {
    let r = router(vec![spec("aa", &["/aa*"])]);
    for p in ["/aa", "/aab", "/aa/x"] {
        assert_eq!(id(&r, &get(p)), "aa", "{p}");
    }
    assert_eq!(hit(&r, &get("/a")), None);
    let r = router(vec![spec("aa/", &["/aa/*"])]);
    for p in ["/aa/", "/aa/x", "/aa/x/y"] {
        assert_eq!(id(&r, &get(p)), "aa/", "{p}");
    }
    assert_eq!(hit(&r, &get("/aa")), None);
    assert_eq!(hit(&r, &get("/aab")), None);
    let r = router(vec![spec("all", &["/*"])]);
    assert_eq!(id(&r, &get("/")), "all");
    assert_eq!(id(&r, &get("/anything/here")), "all");
    let r = router(vec![spec("exact", &["/hello"])]);
    assert_eq!(hit(&r, &get("/hello/")), None);
    assert_eq!(hit(&r, &get("/hell")), None);
}

#[test]
fn longest_prefix_first_regardless_of_priority() {
    let r = router(vec![
        spec("short", &["/a/*"]).prio(100),
        spec("long", &["/a/b/*"]),
        spec("root", &["/*"]).prio(1000),
    ]);
    assert_eq!(id(&r, &get("/a/b/c")), "long");
    assert_eq!(id(&r, &get("/a/x")), "short");
    assert_eq!(id(&r, &get("/z")), "root");
}

#[test]
fn failed_conditions_fall_through_to_shorter_prefixes() {
    let r = router(vec![
        spec("root", &["/*"]),
        spec("m", &["/a/*"]).methods(&["POST"]),
        spec("v", &["/a/b/*"]).vars(json!([["arg_k", "==", "1"]])),
        spec("ip", &["/a/b/c/*"]).addrs(&["10.0.0.0/8"]),
    ]);
    let p = "/a/b/c/d";
    assert_eq!(id(&r, &get(p).ip("10.1.1.1")), "ip");
    assert_eq!(id(&r, &get(p).ip("11.1.1.1").var("arg_k", "1")), "v");
    assert_eq!(id(&r, &get(p).method("POST")), "m");
    assert_eq!(id(&r, &get(p)), "root");
}

#[test]
fn host_condition_falls_through_too() {
    // a host-bound route failing on its method lets a host-less route match
    let r = router(vec![
        spec("bound", &["/a/*"])
            .hosts(&["foo.com"])
            .methods(&["POST"]),
        spec("free", &["/*"]),
    ]);
    assert_eq!(id(&r, &get("/a/x").host("foo.com")), "free");
    assert_eq!(id(&r, &get("/a/x").host("foo.com").method("POST")), "bound");
    assert_eq!(id(&r, &get("/a/x").host("bar.com").method("POST")), "free");
}

#[test]
fn failing_exact_falls_to_prefix() {
    let r = router(vec![
        spec("exact", &["/a/b"]).methods(&["PUT"]),
        spec("prefix", &["/a/b*"]),
    ]);
    assert_eq!(id(&r, &get("/a/b").method("PUT")), "exact");
    assert_eq!(id(&r, &get("/a/b")), "prefix");
}

#[test]
fn ordering_within_one_key() {
    // priority first
    let r = router(vec![
        spec("low", &["/p"]).seq(1),
        spec("high", &["/p"]).prio(5).seq(2),
    ]);
    assert_eq!(id(&r, &get("/p")), "high");
    // insertion order (seq), independent of upsert order
    let r = router(vec![
        spec("second", &["/p"]).seq(2),
        spec("first", &["/p"]).seq(1),
    ]);
    assert_eq!(id(&r, &get("/p")), "first");
    // longer template first, same key `/user/`
    let r = router_mode(
        PathMode::Params,
        vec![
            spec("short", &["/user/*"]).seq(1),
            spec("long", &["/user/:id"]).seq(2),
        ],
    );
    assert_eq!(id(&r, &get("/user/5")), "long");
    assert_eq!(id(&r, &get("/user/5/x")), "short");
    // ... but priority beats template length
    let r = router_mode(
        PathMode::Params,
        vec![
            spec("short", &["/user/*"]).prio(1),
            spec("long", &["/user/:id"]),
        ],
    );
    assert_eq!(id(&r, &get("/user/5")), "short");
    // a losing-but-failing route passes on to the next at the same key
    let r = router(vec![
        spec("a", &["/p"]).prio(2).methods(&["POST"]),
        spec("b", &["/p"]).prio(1),
    ]);
    assert_eq!(id(&r, &get("/p")), "b");
}

// --- hosts ------------------------------------------------------------------

#[test]
fn host_bound_beats_host_less_regardless_of_priority_and_specificity() {
    let r = router(vec![
        spec("free", &["/api/v1/users"]).prio(1000),
        spec("bound", &["/*"]).hosts(&["foo.com"]),
    ]);
    assert_eq!(id(&r, &get("/api/v1/users").host("foo.com")), "bound");
    assert_eq!(id(&r, &get("/api/v1/users").host("bar.com")), "free");
    assert_eq!(id(&r, &get("/api/v1/users")), "free");
}

#[test]
fn wildcard_hosts() {
    let r = router(vec![
        spec("exact", &["/*"]).hosts(&["a.foo.com"]),
        spec("wild", &["/*"]).hosts(&["*.foo.com"]),
        spec("wilder", &["/*"]).hosts(&["*.b.foo.com"]),
        spec("any", &["/*"]).hosts(&["*"]),
        spec("free", &["/*"]),
    ]);
    assert_eq!(id(&r, &get("/").host("a.foo.com")), "exact");
    assert_eq!(id(&r, &get("/").host("x.foo.com")), "wild");
    assert_eq!(id(&r, &get("/").host("x.a.foo.com")), "wild");
    assert_eq!(id(&r, &get("/").host("x.b.foo.com")), "wilder");
    assert_eq!(id(&r, &get("/").host("b.foo.com")), "wild");
    assert_eq!(id(&r, &get("/").host("foo.com")), "any");
    assert_eq!(id(&r, &get("/").host("other.org")), "any");
    assert_eq!(id(&r, &get("/").host("")), "any");
    // without `*`, unknown hosts go to the host-less routes
    r.remove("any");
    assert_eq!(id(&r, &get("/").host("foo.com")), "free");
    assert_eq!(id(&r, &get("/").host("")), "free");
}

#[test]
fn host_candidates_fall_through_in_order() {
    let r = router(vec![
        spec("exact-only-x", &["/x"]).hosts(&["a.foo.com"]),
        spec("wild-y", &["/y"]).hosts(&["*.foo.com"]),
        spec("any-z", &["/z"]).hosts(&["*"]),
        spec("free", &["/*"]),
    ]);
    let h = "a.foo.com";
    assert_eq!(id(&r, &get("/x").host(h)), "exact-only-x");
    assert_eq!(id(&r, &get("/y").host(h)), "wild-y");
    assert_eq!(id(&r, &get("/z").host(h)), "any-z");
    assert_eq!(id(&r, &get("/w").host(h)), "free");
}

#[test]
fn multiple_hosts_and_case() {
    let r = router(vec![
        spec("multi", &["/m"]).hosts(&["A.com", "*.B.com", "c.com"])
    ]);
    for h in ["a.com", "x.b.com", "c.com", "A.COM"] {
        assert_eq!(id(&r, &get("/m").host(h)), "multi", "{h}");
    }
    assert_eq!(hit(&r, &get("/m").host("b.com")), None);
    assert_eq!(hit(&r, &get("/m").host("d.com")), None);
    assert!(r.remove("multi"));
    assert_eq!(hit(&r, &get("/m").host("a.com")), None);
    assert_eq!(hit(&r, &get("/m").host("x.b.com")), None);
}

#[test]
fn wildcard_without_dot_and_long_hosts() {
    let r = router(vec![spec("w", &["/"]).hosts(&["*foo.com"])]);
    assert_eq!(id(&r, &get("/").host("foo.com")), "w");
    assert_eq!(id(&r, &get("/").host("barfoo.com")), "w");
    let long = format!("{}.foo.com", "a".repeat(400));
    assert_eq!(id(&r, &get("/").host(&long)), "w");
    let r = router(vec![spec("l", &["/"]).hosts(&[&long])]);
    assert_eq!(id(&r, &get("/").host(&long)), "l");
}

// --- methods, remote_addrs, vars -------------------------------------------

#[test]
fn methods() {
    let r = router(vec![
        spec("gp", &["/m"]).methods(&["GET", "POST"]),
        spec("any", &["/n"]),
    ]);
    assert_eq!(id(&r, &get("/m")), "gp");
    assert_eq!(id(&r, &get("/m").method("POST")), "gp");
    assert_eq!(hit(&r, &get("/m").method("DELETE")), None);
    assert_eq!(hit(&r, &get("/m").method("BREW")), None);
    assert_eq!(hit(&r, &get("/m").method("get")), None);
    for m in METHOD_NAMES {
        assert_eq!(id(&r, &get("/n").method(m)), "any");
    }
    assert_eq!(id(&r, &get("/n").method("BREW")), "any");
    let r = router(vec![spec("purge", &["/p"]).methods(&["PURGE", "TRACE"])]);
    assert_eq!(id(&r, &get("/p").method("PURGE")), "purge");
    assert_eq!(hit(&r, &get("/p")), None);
}

#[test]
fn remote_addrs() {
    let r = router(vec![
        spec("v4", &["/ip"]).addrs(&["192.168.0.0/16", "10.0.0.1"]),
        spec("v6", &["/ip6"]).addrs(&["2001:db8::/32"]),
    ]);
    assert_eq!(id(&r, &get("/ip").ip("192.168.44.1")), "v4");
    assert_eq!(id(&r, &get("/ip").ip("10.0.0.1")), "v4");
    assert_eq!(id(&r, &get("/ip").ip("::ffff:10.0.0.1")), "v4");
    assert_eq!(hit(&r, &get("/ip").ip("10.0.0.2")), None);
    assert_eq!(hit(&r, &get("/ip")), None, "no address fails");
    assert_eq!(id(&r, &get("/ip6").ip("2001:db8:ffff::1")), "v6");
    assert_eq!(hit(&r, &get("/ip6").ip("2001:db9::1")), None);
    assert_eq!(hit(&r, &get("/ip6").ip("192.168.0.1")), None);
}

#[test]
fn vars_operators_end_to_end() {
    let cases: Vec<(serde_json::Value, Req, bool)> = vec![
        (
            json!([["arg_a", "==", "1"]]),
            get("/").var("arg_a", "1"),
            true,
        ),
        (
            json!([["arg_a", "==", "1"]]),
            get("/").var("arg_a", "2"),
            false,
        ),
        (json!([["arg_a", "1"]]), get("/").var("arg_a", "1"), true),
        (
            json!([["arg_a", "~=", "1"]]),
            get("/").var("arg_a", "2"),
            true,
        ),
        (json!([["arg_a", ">", 5]]), get("/").var("arg_a", "6"), true),
        (
            json!([["arg_a", ">=", 5]]),
            get("/").var("arg_a", "5"),
            true,
        ),
        (
            json!([["arg_a", "<", 5]]),
            get("/").var("arg_a", "5"),
            false,
        ),
        (
            json!([["arg_a", "<=", 5]]),
            get("/").var("arg_a", "5"),
            true,
        ),
        (
            json!([["arg_a", ">", 5]]),
            get("/").var("arg_a", "x"),
            false,
        ),
        (json!([["uri", "~~", "^/api/"]]), get("/api/x"), true),
        (json!([["uri", "~*", "^/API/"]]), get("/api/x"), true),
        (json!([["uri", "~~", "^/API/"]]), get("/api/x"), false),
        (
            json!([["arg_a", "in", ["x", "y"]]]),
            get("/").var("arg_a", "y"),
            true,
        ),
        (
            json!([["http_t", "has", "b"]]),
            get("/").var("http_t", "a,b"),
            false,
        ),
        (
            json!([["remote_addr", "ipmatch", ["10.0.0.0/8"]]]),
            get("/").var("remote_addr", "10.2.3.4"),
            true,
        ),
        (
            json!([["arg_a", "!", "~~", "^a"]]),
            get("/").var("arg_a", "bcd"),
            true,
        ),
        (
            json!([["arg_a", "!", "~~", "^a"]]),
            get("/").var("arg_a", "abc"),
            false,
        ),
        (json!([["http_x", "==", null]]), get("/"), true),
        (
            json!([["http_x", "==", null]]),
            get("/").var("http_x", ""),
            false,
        ),
        (
            json!([
                "OR",
                ["arg_a", "==", "1"],
                ["AND", ["arg_b", "==", "2"], ["arg_c", "==", "3"]]
            ]),
            get("/").var("arg_b", "2").var("arg_c", "3"),
            true,
        ),
        (
            json!(["!OR", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]),
            get("/").var("arg_b", "2"),
            false,
        ),
        (
            json!(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "2"]]),
            get("/").var("arg_b", "2"),
            true,
        ),
    ];
    for (i, (vars, req, want)) in cases.into_iter().enumerate() {
        let r = router(vec![spec("v", &["/*"]).vars(vars.clone())]);
        assert_eq!(hit(&r, &req).is_some(), want, "case {i}: {vars}");
    }
}

#[test]
fn compile_errors_name_the_route_with_apisix_wording() {
    let r: Router<String> = Router::new(PathMode::Plain);
    let e = r
        .upsert(
            spec("r1", &["/a"]).vars(json!([["arg_a", "=", "1"]])),
            Arc::new(String::new()),
        )
        .unwrap_err();
    assert_eq!(e.route_id, "r1");
    assert_eq!(
        e.message,
        "failed to validate the 'vars' expression: invalid operator '='"
    );
    assert_eq!(
        e.to_string(),
        "route 'r1': failed to validate the 'vars' expression: invalid operator '='"
    );
    let bad = [
        spec("m", &["/a"]).methods(&["FETCH"]),
        spec("ip", &["/a"]).addrs(&["300.1.1.1"]),
        spec("h", &["/a"]).hosts(&["bad host"]),
        spec("u", &[]),
        spec("e", &[""]),
        spec("", &["/a"]),
        spec("re", &["/a"]).vars(json!([["uri", "~~", "(unclosed"]])),
    ];
    for s in bad {
        let sid = s.id.clone();
        let e = r.upsert(s, Arc::new(String::new())).unwrap_err();
        assert_eq!(e.route_id, sid);
        assert!(!e.message.is_empty());
    }
    assert!(r.is_empty());
}

// --- parameters -------------------------------------------------------------

#[test]
fn param_mode_captures() {
    let r = router_mode(
        PathMode::Params,
        vec![
            spec("user", &["/user/:id"]),
            spec("file", &["/files/:bucket/*path"]),
            spec("ext", &["/static/*"]),
            spec("lit", &["/user/me"]),
        ],
    );
    let m = r.matches(&get("/user/42")).unwrap();
    assert_eq!(&*m.route_id, "user");
    assert_eq!(m.params, vec![("id".to_string(), "42".to_string())]);
    assert_eq!(id(&r, &get("/user/me")), "lit");
    assert_eq!(hit(&r, &get("/user/42/more")), None);
    let m = r.matches(&get("/files/b1/x/y.txt")).unwrap();
    assert_eq!(
        m.params,
        vec![
            ("bucket".to_string(), "b1".to_string()),
            ("path".to_string(), "x/y.txt".to_string())
        ]
    );
    let m = r.matches(&get("/static/css/a.css")).unwrap();
    assert_eq!(
        m.params,
        vec![(":ext".to_string(), "css/a.css".to_string())]
    );
    assert!(r.matches(&get("/user/me")).unwrap().params.is_empty());
}

#[test]
fn param_route_failing_template_falls_through() {
    let r = router_mode(
        PathMode::Params,
        vec![spec("deep", &["/a/:x/b"]), spec("root", &["/*"])],
    );
    assert_eq!(id(&r, &get("/a/1/b")), "deep");
    assert_eq!(id(&r, &get("/a/1/c")), "root");
}

#[test]
fn plain_mode_colon_is_literal() {
    let r = router(vec![spec("lit", &["/user/:id"]), spec("mid", &["/a/*/c"])]);
    assert_eq!(id(&r, &get("/user/:id")), "lit");
    assert_eq!(hit(&r, &get("/user/5")), None);
    assert_eq!(id(&r, &get("/a/x/y/c")), "mid");
    assert_eq!(hit(&r, &get("/a/x/y/d")), None);
}

// --- updates ----------------------------------------------------------------

#[test]
fn upsert_replacing_a_route_moves_it() {
    let r = router(vec![
        spec("r", &["/old"]).hosts(&["a.com"]),
        spec("other", &["/other"]),
    ]);
    assert_eq!(id(&r, &get("/old").host("a.com")), "r");
    r.upsert(spec("r", &["/new"]), Arc::new("r".into()))
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(hit(&r, &get("/old").host("a.com")), None);
    assert_eq!(id(&r, &get("/new").host("a.com")), "r");
    assert_eq!(id(&r, &get("/new")), "r");
    assert_eq!(id(&r, &get("/other")), "other");
    // payload is replaced too
    r.upsert(spec("r", &["/new"]), Arc::new("r".into()))
        .unwrap();
    r.upsert(spec("other", &["/other"]).prio(3), Arc::new("other".into()))
        .unwrap();
    assert_eq!(r.len(), 2);
}

#[test]
fn remove() {
    let r = router(vec![
        spec("a", &["/a"]),
        spec("b", &["/a*"]),
        spec("c", &["/c"]).hosts(&["*.x.com"]),
    ]);
    assert_eq!(r.len(), 3);
    assert!(r.remove("a"));
    assert!(!r.remove("a"));
    assert!(!r.contains("a"));
    assert_eq!(id(&r, &get("/a")), "b");
    assert!(r.remove("b"));
    assert_eq!(hit(&r, &get("/a")), None);
    assert!(r.remove("c"));
    assert_eq!(hit(&r, &get("/c").host("y.x.com")), None);
    assert!(r.is_empty());
}

#[test]
fn batch_is_atomic_and_ordered() {
    let r = router(vec![spec("keep", &["/keep"]), spec("gone", &["/gone"])]);
    let bad = r.apply_batch(
        vec![
            (spec("n1", &["/n1"]), Arc::new("n1".into())),
            (
                spec("n2", &["/n2"]).vars(json!([["a", "=", "b"]])),
                Arc::new("n2".into()),
            ),
        ],
        vec!["keep".into()],
    );
    let e = bad.unwrap_err();
    assert_eq!(e.route_id, "n2");
    assert_eq!(
        e.message,
        "failed to validate the 'vars' expression: invalid operator '='"
    );
    assert_eq!(r.len(), 2);
    assert_eq!(id(&r, &get("/keep")), "keep");
    assert_eq!(hit(&r, &get("/n1")), None);

    r.apply_batch(
        vec![
            (spec("n1", &["/n1"]), Arc::new("n1".into())),
            (spec("gone", &["/back"]), Arc::new("gone".into())),
        ],
        vec!["gone".into(), "keep".into(), "missing".into()],
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(hit(&r, &get("/keep")), None);
    assert_eq!(hit(&r, &get("/gone")), None);
    assert_eq!(id(&r, &get("/back")), "gone");
    assert_eq!(id(&r, &get("/n1")), "n1");
}

#[test]
fn many_routes_and_churn_keep_consistency() {
    let r: Router<String> = Router::new(PathMode::Plain);
    for i in 0..2000u64 {
        let s = match i % 4 {
            0 => spec(&format!("r{i}"), &[&format!("/api/v1/svc{i}/items/*")]),
            1 => spec(&format!("r{i}"), &[&format!("/api/v1/svc{i}/ping")]),
            2 => spec(&format!("r{i}"), &[&format!("/api/v2/svc{i}/*")])
                .hosts(&[&format!("h{}.example.com", i % 50)]),
            _ => spec(&format!("r{i}"), &[&format!("/v3/{i}*")]).hosts(&["*.wild.com"]),
        };
        r.upsert(s.seq(i), Arc::new(format!("r{i}"))).unwrap();
    }
    assert_eq!(r.len(), 2000);
    assert_eq!(id(&r, &get("/api/v1/svc8/items/42")), "r8");
    assert_eq!(id(&r, &get("/api/v1/svc9/ping")), "r9");
    assert_eq!(
        id(&r, &get("/api/v2/svc10/x").host("h10.example.com")),
        "r10"
    );
    assert_eq!(
        hit(&r, &get("/api/v2/svc10/x").host("h11.example.com")),
        None
    );
    // `/v3/1*` is a prefix of `/v3/1xx`: longest stored prefix wins
    assert_eq!(id(&r, &get("/v3/1999").host("a.wild.com")), "r1999");
    assert_eq!(id(&r, &get("/v3/199x").host("a.wild.com")), "r199");
    for i in (0..2000u64).step_by(3) {
        assert!(r.remove(&format!("r{i}")));
    }
    for i in 0..2000u64 {
        let req = match i % 4 {
            0 => get(&format!("/api/v1/svc{i}/items/1")),
            1 => get(&format!("/api/v1/svc{i}/ping")),
            2 => get(&format!("/api/v2/svc{i}/x")).host(&format!("h{}.example.com", i % 50)),
            _ => get(&format!("/v3/{i}")).host("q.wild.com"),
        };
        let got = hit(&r, &req);
        if i % 3 == 0 {
            assert!(
                got.as_deref() != Some(format!("r{i}").as_str()),
                "r{i} was removed"
            );
        } else {
            assert_eq!(got, Some(format!("r{i}")), "r{i}");
        }
    }
}

#[test]
fn concurrent_readers_never_see_missing_unrelated_routes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let r: Arc<Router<String>> = Arc::new(router(
        (0..200)
            .map(|i| spec(&format!("s{i}"), &[&format!("/stable/{i}/*")]))
            .collect(),
    ));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (r, done) = (Arc::clone(&r), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) || n < 1000 {
                let i = n % 200;
                let got = hit(&r, &get(&format!("/stable/{i}/x")));
                assert_eq!(got, Some(format!("s{i}")));
                n += 1;
            }
            n
        })
    };
    for k in 0..1000u64 {
        let s = spec("churn", &[&format!("/stable/{}/x/{}", k % 200, k)]).hosts(&["*"]);
        r.upsert(s, Arc::new("churn".into())).unwrap();
        if k % 10 == 0 {
            r.upsert(
                spec(&format!("tmp{k}"), &["/stable/*"]),
                Arc::new(format!("tmp{k}")),
            )
            .unwrap();
            assert!(r.remove(&format!("tmp{k}")));
        }
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() >= 1000);
    assert_eq!(r.len(), 201);
}

#[test]
fn batch_building_does_not_touch_published_versions() {
    // A batch mutates freshly copied nodes in place; the version readers
    // hold must stay exactly as it was until the swap.
    let r = router(
        (0..50)
            .map(|i| spec(&format!("a{i}"), &[&format!("/a/{i}")]).hosts(&["x.com"]))
            .collect(),
    );
    let before: Vec<_> = (0..50)
        .map(|i| hit(&r, &get(&format!("/a/{i}")).host("x.com")))
        .collect();
    let snap = r.current.load_full();
    r.apply_batch(
        (0..50)
            .map(|i| {
                (
                    spec(&format!("a{i}"), &[&format!("/b/{i}")]),
                    Arc::new(format!("a{i}")),
                )
            })
            .collect(),
        Vec::new(),
    )
    .unwrap();
    let old = Router {
        mode: PathMode::Plain,
        current: ArcSwap::new(snap),
        writer: Mutex::new(()),
    };
    let after: Vec<_> = (0..50)
        .map(|i| hit(&old, &get(&format!("/a/{i}")).host("x.com")))
        .collect();
    assert_eq!(before, after);
    assert_eq!(hit(&r, &get("/a/1").host("x.com")), None);
    assert_eq!(id(&r, &get("/b/1").host("x.com")), "a1");
}

#[test]
fn router_is_send_and_sync() {
    fn check<X: Send + Sync>() {}
    check::<Router<String>>();
    check::<Matched<String>>();
}

#[test]
fn spec_deserializes_with_defaults() {
    let s: RouteSpec =
        serde_json::from_value(json!({"id": "1", "uris": ["/a"], "methods": ["GET"]})).unwrap();
    assert_eq!(s.priority, 0);
    assert_eq!(s.hosts, None);
    assert_eq!(s.methods, strings(&["GET"]));
}
