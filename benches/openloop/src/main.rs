//! Open-loop HTTP/1.1 load at a fixed rate, latency measured from the intended send time.
//!
//! ```text
//! openloop --url http://127.0.0.1:9090/hello --rate 2000 --duration 10 [--connections 50] [--timeout 2]
//! ```
//!
//! Request `i` is due at `start + i / rate`, whatever happened to the requests before it. A pool
//! of keep-alive connections (one blocking thread each, no pipelining) takes the due requests in
//! order; a request that waits for a free connection is late, and its latency
//! (completion − due time) includes that wait, so a stalled server cannot hide its stall by
//! slowing the load down (no coordinated omission). No request is sent after the schedule's end
//! plus `--timeout`: those never sent are reported as `unsent`. Prints one JSON object.
//!
//! Threads with `std::thread::sleep` rather than an async runtime: tokio's timer ticks every
//! millisecond, which would add up to 1 ms to each measured latency; a thread's sleep is off by
//! the thread's wake-up delay, a few tens of µs once the timer slack is set to 1 ns, included in
//! the figures (`send_lag_*` reports it; the origin row shows the floor).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What to load and how hard.
#[derive(Debug, Clone)]
struct Config {
    host: String,
    port: u16,
    path: String,
    rate: f64,
    duration: Duration,
    connections: usize,
    timeout: Duration,
}

fn usage() -> String {
    "usage: openloop --url http://HOST:PORT/PATH --rate REQ_PER_S --duration SECONDS \
     [--connections N (50)] [--timeout SECONDS (2)]"
        .to_string()
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut url = None;
    let (mut rate, mut duration, mut connections, mut timeout) = (None, None, 50usize, 2.0f64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--url" => url = Some(value.clone()),
            "--rate" => rate = Some(number(value)?),
            "--duration" => duration = Some(number(value)?),
            "--connections" => {
                connections = value
                    .parse()
                    .map_err(|_| format!("--connections: {value}"))?
            }
            "--timeout" => timeout = number(value)?,
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    let url = url.ok_or_else(usage)?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("the URL needs a port: {url}"))?;
    let port = port.parse().map_err(|_| format!("bad port in {url}"))?;
    let rate = rate.ok_or_else(usage)?;
    let duration = duration.ok_or_else(usage)?;
    if ![rate, duration, timeout]
        .iter()
        .all(|v| v.is_finite() && *v > 0.0)
        || connections == 0
    {
        return Err("--rate, --duration, --timeout and --connections must be > 0".into());
    }
    Ok(Config {
        host: host.to_string(),
        port,
        path: path.to_string(),
        rate,
        duration: Duration::from_secs_f64(duration),
        connections,
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// The value at quantile `ppm` (parts per million: 990_000 is p99) of ascending `sorted`
/// samples, by nearest rank as HdrHistogram reports it: the smallest sample that at least
/// `ppm` of all samples do not exceed. Integer arithmetic, so p99.9 of 1,000 samples is the
/// 999th and not, through rounding, the 1,000th. 0 when there are no samples.
fn percentile(sorted: &[u64], ppm: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u128;
    let rank = (u128::from(ppm.min(1_000_000)) * n)
        .div_ceil(1_000_000)
        .max(1);
    sorted[(rank - 1) as usize]
}

/// One keep-alive connection: writes a request, reads one response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(cfg: &Config) -> std::io::Result<Conn> {
        let stream = TcpStream::connect((cfg.host.as_str(), cfg.port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(cfg.timeout))?;
        stream.set_write_timeout(Some(cfg.timeout))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request`; returns the response's status and whether the connection stays usable.
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(request)?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end);
        let mut keep_alive = !head.close;
        match head.body {
            Body::Length(len) => {
                while self.buf.len() < len {
                    self.fill()?;
                }
                self.buf.drain(..len);
            }
            Body::Chunked => self.skip_chunks()?,
            Body::UntilClose => {
                while self.fill().is_ok() {}
                keep_alive = false;
            }
        }
        Ok((head.status, keep_alive))
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn skip_chunks(&mut self) -> std::io::Result<()> {
        loop {
            let line = self.line()?;
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                while !self.line()?.is_empty() {} // trailers, then the empty line
                return Ok(());
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            self.buf.drain(..size + 2);
        }
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad response: {what}"),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq)]
enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    body: Body,
    close: bool,
}

/// Parses a response head (status line and headers, up to and including the empty line).
fn parse_head(head: &[u8]) -> std::io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("status line"))?;
    let mut close = version == "HTTP/1.0";
    let mut body = Body::UntilClose;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") && body != Body::Chunked {
            body = Body::Length(value.parse().map_err(|_| invalid("content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            body = Body::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body = Body::Length(0);
    }
    Ok(Head {
        status,
        body,
        close,
    })
}

/// What one connection's thread measured.
#[derive(Default)]
struct Tally {
    latency_ns: Vec<u64>,
    send_lag_ns: Vec<u64>,
    non_2xx_3xx: u64,
    errors: u64,
    last_done: Option<Instant>,
}

fn run_connection(
    cfg: &Config,
    mut conn: Option<Conn>,
    start: Instant,
    next: &AtomicU64,
    total: u64,
) -> Tally {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: openloop\r\n\r\n",
        cfg.path, cfg.host, cfg.port
    );
    let last_send = start + cfg.duration + cfg.timeout;
    tighten_timer_slack();
    let mut tally = Tally::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate);
        let now = Instant::now();
        if now >= last_send {
            break; // the remaining requests are reported as unsent
        }
        if due > now {
            thread::sleep(due - now);
        }
        tally
            .send_lag_ns
            .push(nanos(Instant::now().saturating_duration_since(due)));
        let outcome = match conn.take() {
            Some(c) => Ok(c),
            None => Conn::open(cfg),
        }
        .and_then(|mut c| {
            c.exchange(request.as_bytes())
                .map(|(status, keep)| (c, status, keep))
        });
        match outcome {
            Ok((c, status, keep_alive)) => {
                let done = Instant::now();
                tally.latency_ns.push(nanos(done - due));
                tally.last_done = Some(done);
                if !(200..400).contains(&status) {
                    tally.non_2xx_3xx += 1;
                }
                if keep_alive {
                    conn = Some(c);
                }
            }
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// Asks Linux to wake this thread's sleeps on time (default slack: 50 µs late).
#[cfg(target_os = "linux")]
fn tighten_timer_slack() {
    extern "C" {
        fn prctl(option: i32, ...) -> i32;
    }
    const PR_SET_TIMERSLACK: i32 = 29;
    // SAFETY: prctl(PR_SET_TIMERSLACK, n) only changes this thread's timer slack.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1u64);
    }
}

#[cfg(not(target_os = "linux"))]
fn tighten_timer_slack() {}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn run(cfg: Config) -> Result<String, String> {
    let total = (cfg.rate * cfg.duration.as_secs_f64()).round().max(1.0) as u64;
    // Connect first, so that the schedule does not start with the handshakes.
    let conns = (0..cfg.connections)
        .map(|_| Conn::open(&cfg))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot connect to {}:{}: {e}", cfg.host, cfg.port))?;
    let cfg = Arc::new(cfg);
    let next = Arc::new(AtomicU64::new(0));
    // Leave the threads time to start before the first request is due.
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (cfg, next) = (Arc::clone(&cfg), Arc::clone(&next));
            thread::spawn(move || run_connection(&cfg, Some(conn), start, &next, total))
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| "a connection thread panicked".to_string())?;
        all.latency_ns.extend(t.latency_ns);
        all.send_lag_ns.extend(t.send_lag_ns);
        all.non_2xx_3xx += t.non_2xx_3xx;
        all.errors += t.errors;
        all.last_done = all.last_done.max(t.last_done);
    }
    all.latency_ns.sort_unstable();
    all.send_lag_ns.sort_unstable();
    let sent = all.send_lag_ns.len() as u64;
    let completed = all.latency_ns.len() as u64;
    let elapsed = all
        .last_done
        .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let lat = |ppm| ms(percentile(&all.latency_ns, ppm));
    let lag = |ppm| ms(percentile(&all.send_lag_ns, ppm));
    Ok(format!(
        concat!(
            "{{\"rate\": {}, \"duration_s\": {}, \"connections\": {}, \"scheduled\": {}, ",
            "\"sent\": {}, \"completed\": {}, \"unsent\": {}, \"errors\": {}, ",
            "\"non_2xx_3xx\": {}, \"achieved_rps\": {:.1}, \"p50_ms\": {:.4}, ",
            "\"p90_ms\": {:.4}, \"p99_ms\": {:.4}, \"p999_ms\": {:.4}, \"max_ms\": {:.4}, ",
            "\"send_lag_p50_ms\": {:.4}, \"send_lag_p99_ms\": {:.4}}}"
        ),
        cfg.rate,
        cfg.duration.as_secs_f64(),
        cfg.connections,
        total,
        sent,
        completed,
        total - sent,
        all.errors,
        all.non_2xx_3xx,
        if elapsed > 0.0 {
            completed as f64 / elapsed
        } else {
            0.0
        },
        lat(500_000),
        lat(900_000),
        lat(990_000),
        lat(999_000),
        lat(1_000_000),
        lag(500_000),
        lag(990_000),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args).and_then(run) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 500_000), 50, "p50 of 1..=100");
        assert_eq!(percentile(&s, 990_000), 99, "p99 of 1..=100");
        assert_eq!(
            percentile(&s, 999_000),
            100,
            "p99.9 of 100 samples is the maximum"
        );
        assert_eq!(percentile(&s, 1_000_000), 100, "p100 is the maximum");
        assert_eq!(percentile(&s, 0), 1, "p0 is the minimum");
        assert_eq!(percentile(&s, 501_000), 51, "just above a rank rounds up");
    }

    #[test]
    fn percentile_does_not_round_p999_of_1000_samples_up() {
        let s: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&s, 999_000), 999);
        assert_eq!(percentile(&s, 990_000), 990);
    }

    #[test]
    fn percentile_of_one_or_no_sample() {
        assert_eq!(percentile(&[7], 500_000), 7);
        assert_eq!(percentile(&[7], 999_000), 7);
        assert_eq!(percentile(&[], 990_000), 0, "no samples: 0, not a panic");
    }

    #[test]
    fn percentile_sees_a_rare_stall() {
        // 10,000 samples of 1 with 11 stalls of 500: p99.9 (the 9,990th) is a stall.
        let mut s = vec![1u64; 9_989];
        s.extend([500u64; 11]);
        assert_eq!(percentile(&s, 990_000), 1);
        assert_eq!(percentile(&s, 999_000), 500);
    }

    #[test]
    fn head_with_content_length() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                body: Body::Length(12),
                close: false
            }
        );
    }

    #[test]
    fn head_chunked_and_close() {
        let h = parse_head(
            b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 429,
                body: Body::Chunked,
                close: true
            }
        );
    }

    #[test]
    fn head_without_length_reads_until_close() {
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                body: Body::UntilClose,
                close: true
            }
        );
        assert!(
            parse_head(b"garbage\r\n\r\n").is_err(),
            "a bad status line is an error"
        );
    }

    #[test]
    fn url_and_flags() {
        let args: Vec<String> = [
            "--url",
            "http://127.0.0.1:9090/hello",
            "--rate",
            "100",
            "--duration",
            "1.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cfg = parse_args(&args).unwrap();
        assert_eq!(
            (cfg.host.as_str(), cfg.port, cfg.path.as_str()),
            ("127.0.0.1", 9090, "/hello")
        );
        assert_eq!(cfg.duration, Duration::from_millis(1500));
        assert_eq!(cfg.connections, 50);
        assert!(parse_args(&args[..4]).is_err(), "--duration is required");
    }
}
