//! A small stderr logger for the data plane, in nginx's error-log shape.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "[{level}] pygateway: {}",
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger once and sets the level (`error`, `warn`, `info`, `debug`, `off`).
pub fn init(level: &str) -> Result<(), String> {
    let filter = match level {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        other => return Err(format!("unknown log level {other:?}")),
    };
    if !INSTALLED.swap(true, Ordering::SeqCst) {
        let _ = log::set_logger(&LOGGER);
    }
    log::set_max_level(filter);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_level_is_refused() {
        assert!(super::init("loud").is_err());
        assert!(super::init("warn").is_ok());
    }
}
