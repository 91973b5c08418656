//! Router benchmark: `cargo bench --bench router`.
//!
//! Builds 50,000 routes (exact, prefix, parameter-free host-bound and
//! wildcard-host routes), then measures matching latency and the cost of
//! single-route upserts and removals at that size. Plain `std::time`, no
//! harness.

use _core::router::{PathMode, RequestVars, RouteSpec, Router};
use std::borrow::Cow;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUTES: usize = 50_000;

struct Req {
    method: &'static str,
    host: String,
    path: String,
    remote: Option<IpAddr>,
}

impl RequestVars for Req {
    fn method(&self) -> &str {
        self.method
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
            "arg_version" => Some(Cow::Borrowed("2")),
            _ => None,
        }
    }
}

fn spec(i: usize) -> RouteSpec {
    let mut s = RouteSpec {
        id: format!("route-{i}"),
        seq: i as u64,
        ..RouteSpec::default()
    };
    match i % 5 {
        0 => s.uris = vec![format!("/api/v1/svc{i}/items/*")],
        1 => {
            s.uris = vec![
                format!("/api/v1/svc{i}/health"),
                format!("/api/v1/svc{i}/ready"),
            ];
            s.methods = Some(vec!["GET".into(), "HEAD".into()]);
        }
        2 => {
            s.uris = vec![format!("/tenant/{i}/orders/*")];
            s.hosts = Some(vec![format!("t{}.shop.example.com", i % 2000)]);
        }
        3 => {
            s.uris = vec![format!("/static/{i}/*")];
            s.hosts = Some(vec!["*.cdn.example.com".into()]);
            s.vars = Some(serde_json::json!([["arg_version", ">=", 1]]));
        }
        _ => {
            s.uris = vec![format!("/api/v2/users/{i}/profile")];
            s.remote_addrs = Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]);
        }
    }
    s
}

fn requests() -> Vec<Req> {
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let mut out = Vec::new();
    for k in 0..64usize {
        let i = (k * 7919) % ROUTES;
        let base = i - i % 5;
        out.push(Req {
            method: "GET",
            host: "api.example.com".into(),
            path: format!("/api/v1/svc{base}/items/{k}/detail"),
            remote: Some(ip),
        });
        out.push(Req {
            method: "GET",
            host: "api.example.com".into(),
            path: format!("/api/v1/svc{}/health", base + 1),
            remote: Some(ip),
        });
        out.push(Req {
            method: "POST",
            host: format!("t{}.shop.example.com", (base + 2) % 2000),
            path: format!("/tenant/{}/orders/123", base + 2),
            remote: Some(ip),
        });
        out.push(Req {
            method: "GET",
            host: "eu.cdn.example.com".into(),
            path: format!("/static/{}/app.js", base + 3),
            remote: Some(ip),
        });
        out.push(Req {
            method: "GET",
            host: "api.example.com".into(),
            path: format!("/api/v2/users/{}/profile", base + 4),
            remote: Some(ip),
        });
        out.push(Req {
            method: "GET",
            host: "api.example.com".into(),
            path: format!("/nothing/here/{k}"),
            remote: Some(ip),
        });
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let router: Router<String> = Router::new(PathMode::Plain);

    let t = Instant::now();
    for i in 0..ROUTES {
        router
            .upsert(spec(i), Arc::new(format!("payload-{i}")))
            .unwrap();
    }
    let build_one_by_one = t.elapsed();

    let batch_router: Router<String> = Router::new(PathMode::Plain);
    let specs: Vec<_> = (0..ROUTES)
        .map(|i| (spec(i), Arc::new(format!("payload-{i}"))))
        .collect();
    let t = Instant::now();
    batch_router.apply_batch(specs, Vec::new()).unwrap();
    let build_batch = t.elapsed();
    assert_eq!(router.len(), ROUTES);
    assert_eq!(batch_router.len(), ROUTES);

    // correctness spot checks
    let reqs = requests();
    let mut hits = 0;
    for r in &reqs {
        if let Some(m) = router.matches(r) {
            hits += 1;
            assert!(m.route_id.starts_with("route-"));
        }
    }
    assert_eq!(
        hits,
        reqs.len() * 5 / 6,
        "every request but the 404 ones matches"
    );

    // matching: median over rounds of the per-request mean
    let rounds = 200;
    let per_round = 50;
    let mut samples = Vec::with_capacity(rounds);
    let mut miss_samples = Vec::with_capacity(rounds);
    let misses: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/nothing"))
        .collect();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            for r in &reqs {
                black_box(router.matches(black_box(r)));
            }
        }
        samples.push(t.elapsed().as_nanos() as f64 / (per_round * reqs.len()) as f64);
        let t = Instant::now();
        for _ in 0..per_round {
            for r in &misses {
                black_box(router.matches(black_box(*r)));
            }
        }
        miss_samples.push(t.elapsed().as_nanos() as f64 / (per_round * misses.len()) as f64);
    }
    let match_ns = median(&mut samples);
    let mut batch_samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            for r in &reqs {
                black_box(batch_router.matches(black_box(r)));
            }
        }
        batch_samples.push(t.elapsed().as_nanos() as f64 / (per_round * reqs.len()) as f64);
    }
    let batch_match_ns = median(&mut batch_samples);
    let mut per_kind = Vec::new();
    for kind in 0..6 {
        let group: Vec<&Req> = reqs.iter().skip(kind).step_by(6).collect();
        let mut v = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            for _ in 0..per_round {
                for r in &group {
                    black_box(router.matches(black_box(*r)));
                }
            }
            v.push(t.elapsed().as_nanos() as f64 / (per_round * group.len()) as f64);
        }
        per_kind.push(median(&mut v));
    }
    let miss_ns = median(&mut miss_samples);

    // single-route upserts (new id, replace existing id) and removes at 50k
    let n = 1000;
    let mut ins = Vec::with_capacity(n);
    let mut rep = Vec::with_capacity(n);
    let mut rem = Vec::with_capacity(n);
    for k in 0..n {
        let i = ROUTES + k;
        let t = Instant::now();
        router.upsert(spec(i), Arc::new(String::new())).unwrap();
        ins.push(ms(t.elapsed()));

        let j = (k * 7919) % ROUTES;
        let mut s = spec(j);
        s.priority = 1;
        let t = Instant::now();
        router.upsert(s, Arc::new(String::new())).unwrap();
        rep.push(ms(t.elapsed()));

        let t = Instant::now();
        assert!(router.remove(&format!("route-{i}")));
        rem.push(ms(t.elapsed()));
    }
    assert_eq!(router.len(), ROUTES);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);

    println!(
        "router bench ({ROUTES} routes, {} request paths)",
        reqs.len()
    );
    println!("{:<34} {:>12}", "metric", "value");
    println!("{:-<34} {:->12}", "", "");
    println!(
        "{:<34} {:>9.1} ms",
        "build 50k (one upsert each)",
        ms(build_one_by_one)
    );
    println!(
        "{:<34} {:>9.1} ms",
        "build 50k (one apply_batch)",
        ms(build_batch)
    );
    println!(
        "{:<34} {:>9.0} ns",
        "match, median (mixed, 5/6 hit)", match_ns
    );
    println!(
        "{:<34} {:>9.0} ns",
        "match, median (batch-built router)", batch_match_ns
    );
    println!("{:<34} {:>9.0} ns", "match, median (404 path)", miss_ns);
    let kinds = [
        "prefix /*",
        "exact+methods",
        "exact host",
        "wildcard host+vars",
        "exact+remote_addrs",
        "404",
    ];
    for (k, ns) in kinds.iter().zip(&per_kind) {
        println!("{:<34} {:>9.0} ns", format!("  match, median: {k}"), ns);
    }
    println!(
        "{:<34} {:>9.4} ms",
        "upsert new id, median",
        median(&mut ins.clone())
    );
    println!("{:<34} {:>9.4} ms", "upsert new id, max", max(&ins));
    println!(
        "{:<34} {:>9.4} ms",
        "upsert replace id, median",
        median(&mut rep.clone())
    );
    println!("{:<34} {:>9.4} ms", "upsert replace id, max", max(&rep));
    println!(
        "{:<34} {:>9.4} ms",
        "remove, median",
        median(&mut rem.clone())
    );
    println!("{:<34} {:>9.4} ms", "remove, max", max(&rem));
}
