//! The access log: formats one [`AccessRecord`] per request (`seed`, `combined` or `json`) and writes it to the logger, stdout, or a file that one writer thread appends to and reopens on SIGUSR1.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::config::{AccessLogFormat, AccessLogTarget, Config};

/// Records waiting for the writer thread. Past this the request path drops records (and counts them)
/// rather than wait on a slow disk; about 3 MB of lines at 200 bytes each.
const QUEUE: usize = 16 * 1024;
/// Most records written between two flushes, so a busy log still flushes and notices SIGUSR1.
const BATCH: usize = 1024;
/// How often an idle writer wakes to look at the reopen flag and the dropped-record count.
const TICK: Duration = Duration::from_millis(100);
/// Size of the file buffer; one flush per batch writes it out.
const FILE_BUFFER: usize = 64 * 1024;

impl AccessLogTarget {
    /// What `proxy --check-config` verifies without creating anything: an existing file must open for
    /// appending, a new one needs its directory.
    pub fn check(&self) -> Result<(), AccessLogError> {
        let AccessLogTarget::File(path) = self else { return Ok(()) };
        if path.exists() {
            return OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|source| AccessLogError::Open { path: path.clone(), source });
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if dir.is_dir() {
            Ok(())
        } else {
            Err(AccessLogError::NoDirectory { dir: dir.to_path_buf() })
        }
    }

    /// How `--check-config` and the start-up log describe it.
    pub fn describe(&self) -> String {
        match self {
            AccessLogTarget::Logger => "the log (stderr)".to_string(),
            AccessLogTarget::Stdout => "standard output".to_string(),
            AccessLogTarget::File(path) => path.display().to_string(),
        }
    }
}

/// Why the access log could not be set up.
#[derive(Debug)]
pub enum AccessLogError {
    /// The file could not be opened for appending (permissions, a directory in the way, ...).
    Open { path: PathBuf, source: io::Error },
    /// The file does not exist yet and neither does the directory it would be created in.
    NoDirectory { dir: PathBuf },
    /// The writer thread could not be started.
    Thread(io::Error),
}

impl fmt::Display for AccessLogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogError::Open { path, source } => {
                write!(f, "access_log_file: cannot open {} for appending: {source}", path.display())
            }
            AccessLogError::NoDirectory { dir } => write!(
                f,
                "access_log_file: directory {} does not exist; create it or choose another file",
                dir.display()
            ),
            AccessLogError::Thread(e) => write!(f, "access log: cannot start the writer thread: {e}"),
        }
    }
}

impl std::error::Error for AccessLogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AccessLogError::Open { source, .. } | AccessLogError::Thread(source) => Some(source),
            AccessLogError::NoDirectory { .. } => None,
        }
    }
}

/// One finished request as the access log sees it. Everything is borrowed from the request, so
/// building one allocates nothing.
#[derive(Debug, Clone)]
pub struct AccessRecord<'a> {
    /// When the response was finished.
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: &'a str,
    /// The origin-form target (`/path?query`).
    pub target: &'a str,
    /// Minor HTTP version of the request: 0 or 1.
    pub version: u8,
    pub status: u16,
    /// Body bytes sent to the client, head excluded (nginx's `$body_bytes_sent`).
    pub body_bytes: u64,
    pub duration: Duration,
    /// Who answered: a backend's name, `cache` for a cache hit, `None` when no one did.
    pub backend: Option<&'a str>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

impl<'a> AccessRecord<'a> {
    /// The record as one line in `format`, without the newline; formats only when displayed.
    pub fn line(&'a self, format: AccessLogFormat) -> Line<'a> {
        Line { record: self, format }
    }
}

/// An [`AccessRecord`] in one format; `Display` writes the line.
pub struct Line<'a> {
    record: &'a AccessRecord<'a>,
    format: AccessLogFormat,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.record;
        match self.format {
            AccessLogFormat::Seed => write!(
                f,
                "[*] Request done: {} => {} {} {} {:.4}s <= {}",
                r.client,
                r.method,
                r.target,
                r.status,
                r.duration.as_secs_f64(),
                r.backend.unwrap_or("-"),
            ),
            AccessLogFormat::Combined => {
                // $remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
                write!(f, "{} - - [", r.client)?;
                write_clf_time(f, r.time)?;
                f.write_str("] \"")?;
                write_clf_escaped(f, r.method.as_bytes())?;
                f.write_char(' ')?;
                write_clf_escaped(f, r.target.as_bytes())?;
                write!(f, " HTTP/1.{}\" {} {} \"", r.version, r.status, r.body_bytes)?;
                write_clf_escaped(f, or_dash(r.referer))?;
                f.write_str("\" \"")?;
                write_clf_escaped(f, or_dash(r.user_agent))?;
                f.write_char('"')
            }
            AccessLogFormat::Json => {
                f.write_str("{\"time\":\"")?;
                write_rfc3339(f, r.time)?;
                write!(f, "\",\"client\":\"{}\",\"method\":", r.client)?;
                write_json_string(f, r.method.as_bytes())?;
                f.write_str(",\"path\":")?;
                write_json_string(f, r.target.as_bytes())?;
                write!(
                    f,
                    ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"backend\":",
                    r.status,
                    r.body_bytes,
                    r.duration.as_secs_f64() * 1000.0
                )?;
                write_json_opt(f, r.backend.map(str::as_bytes))?;
                f.write_str(",\"user_agent\":")?;
                write_json_opt(f, r.user_agent)?;
                f.write_str(",\"referer\":")?;
                write_json_opt(f, r.referer)?;
                f.write_char('}')
            }
        }
    }
}

/// nginx writes `-` for a field that is missing or empty.
fn or_dash(value: Option<&[u8]>) -> &[u8] {
    match value {
        Some(v) if !v.is_empty() => v,
        _ => b"-",
    }
}

/// As nginx escapes log variables: `"`, `\`, control bytes and bytes past ASCII become `\xHH`, so a
/// client cannot break the line apart or forge a field.
fn write_clf_escaped(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            // Everything before `i` is printable ASCII, so it is valid UTF-8.
            f.write_str(std::str::from_utf8(&bytes[start..i]).unwrap_or_default())?;
            write!(f, "\\x{b:02X}")?;
            start = i + 1;
        }
    }
    f.write_str(std::str::from_utf8(&bytes[start..]).unwrap_or_default())
}

/// A JSON string: quotes, backslashes and control characters escaped; bytes that are not UTF-8
/// become U+FFFD so the line stays valid JSON; other non-ASCII text is written as UTF-8.
fn write_json_string(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    f.write_char('"')?;
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if u32::from(c) < 0x20 || c == '\u{7f}' => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

fn write_json_opt(f: &mut impl fmt::Write, value: Option<&[u8]>) -> fmt::Result {
    match value {
        Some(v) => write_json_string(f, v),
        None => f.write_str("null"),
    }
}

/// A UTC calendar time, to the millisecond. Times before 1970 (a clock set wrong) show as 1970.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Utc {
    fn at(time: SystemTime) -> Utc {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = (secs % 86_400) as u32;
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            millis: since.subsec_millis(),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`); done here rather than pull in a date crate for two formats.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2026-11-23T12:47:05.123Z` (RFC 3339, UTC).
fn write_rfc3339(f: &mut impl fmt::Write, time: SystemTime) -> fmt::Result {
    let t = Utc::at(time);
    write!(
        f,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// `23/Nov/2026:12:47:05 +0000`, the common log format's time. Always UTC: the local offset cannot be
/// read safely from a multi-threaded process, and servers usually run in UTC anyway.
fn write_clf_time(f: &mut impl fmt::Write, time: SystemTime) -> fmt::Result {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = Utc::at(time);
    let month = MONTHS.get(t.month as usize - 1).copied().unwrap_or("Jan");
    write!(f, "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000", t.day, t.year, t.hour, t.minute, t.second)
}

// ---------------------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------------------

enum Msg {
    Line(String),
    Stop,
}

enum Sink {
    Off,
    Logger,
    Writer { tx: Sender<Msg>, thread: Mutex<Option<JoinHandle<()>>> },
}

/// The access log of one server. Workers call [`AccessLog::log`]; with a file or stdout, lines go over
/// a bounded channel to one writer thread, which batches them and flushes after each batch, so workers
/// never wait on the disk or on each other.
pub struct AccessLog {
    format: AccessLogFormat,
    sink: Sink,
    /// Set by SIGUSR1 or [`AccessLog::reopen`]; the writer reopens the file when it sees it.
    reopen: Arc<AtomicBool>,
    /// Records dropped because the writer fell behind (or had stopped).
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Sets up the log `config` asks for; a file is opened (created if needed) now, so a bad path stops
    /// the proxy at start-up rather than losing the log.
    pub fn start(config: &Config) -> Result<AccessLog, AccessLogError> {
        let reopen = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let format = config.access_log_format;
        let output = match &config.access_log_file {
            _ if !config.access_log => return Ok(AccessLog { format, sink: Sink::Off, reopen, dropped }),
            AccessLogTarget::Logger => return Ok(AccessLog { format, sink: Sink::Logger, reopen, dropped }),
            AccessLogTarget::Stdout => Output::Stdout(io::stdout()),
            AccessLogTarget::File(path) => Output::File { file: open(path)?, path: path.clone() },
        };
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = {
            let (reopen, dropped) = (Arc::clone(&reopen), Arc::clone(&dropped));
            thread::Builder::new()
                .name("pibl-access-log".into())
                .spawn(move || write_loop(&rx, output, &reopen, &dropped))
                .map_err(AccessLogError::Thread)?
        };
        Ok(AccessLog { format, sink: Sink::Writer { tx, thread: Mutex::new(Some(thread)) }, reopen, dropped })
    }

    /// Logs one request. Never blocks: if the writer is behind, the record is dropped and counted.
    pub fn log(&self, record: &AccessRecord<'_>) {
        match &self.sink {
            Sink::Off => {}
            Sink::Logger => log::info!(target: "access", "{}", record.line(self.format)),
            Sink::Writer { tx, .. } => {
                let mut line = String::with_capacity(256);
                let _ = writeln!(line, "{}", record.line(self.format));
                if tx.try_send(Msg::Line(line)).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Asks the writer to reopen the file (what SIGUSR1 does); a no-op without a file.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Makes SIGUSR1 reopen the file. Call it even without a file: SIGUSR1's default action would
    /// kill the process, and logrotate's `postrotate` sends it regardless.
    pub fn reopen_on_sigusr1(&self) -> io::Result<()> {
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&self.reopen)).map(drop)
    }

    /// Records dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes out what is queued and stops the writer; records logged later are dropped. Waits for the
    /// writer, so the file is complete when this returns.
    pub fn close(&self) {
        if let Sink::Writer { tx, thread } = &self.sink {
            // A full queue is being drained; the writer takes Stop once there is room.
            let _ = tx.send_timeout(Msg::Stop, Duration::from_secs(5));
            if let Some(handle) = thread.lock().take() {
                let _ = handle.join();
            }
        }
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match self.sink {
            Sink::Off => "off",
            Sink::Logger => "logger",
            Sink::Writer { .. } => "writer",
        };
        f.debug_struct("AccessLog").field("format", &self.format).field("sink", &sink).finish()
    }
}

fn open(path: &Path) -> Result<File, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AccessLogError::Open { path: path.to_path_buf(), source })
}

enum Output {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File },
}

/// The writer thread: waits for a record, takes whatever else is queued (up to [`BATCH`]), writes them
/// through one buffer and flushes, then looks at the reopen flag. A line is on disk at most one batch
/// after it was logged.
fn write_loop(rx: &Receiver<Msg>, output: Output, reopen: &AtomicBool, dropped: &AtomicU64) {
    let (mut out, path): (BufWriter<Box<dyn Write + Send>>, Option<PathBuf>) = match output {
        Output::Stdout(stdout) => (BufWriter::with_capacity(FILE_BUFFER, Box::new(stdout)), None),
        Output::File { path, file } => (BufWriter::with_capacity(FILE_BUFFER, Box::new(file)), Some(path)),
    };
    let mut failing = false;
    let mut reported_drops = 0;
    loop {
        let mut stop = false;
        let mut batch = 0;
        let mut next = match rx.recv_timeout(TICK) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Msg::Stop),
        };
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    let written = out.write_all(line.as_bytes());
                    note_write(&mut failing, written, path.as_deref());
                }
                Msg::Stop => stop = true,
            }
            batch += 1;
            // After Stop, keep draining: those records were logged before close() was called.
            if batch < BATCH || stop {
                // Empty or disconnected: the batch ends here either way.
                next = rx.try_recv().ok();
            }
        }
        if batch > 0 {
            let flushed = out.flush();
            note_write(&mut failing, flushed, path.as_deref());
        }
        if reopen.swap(false, Ordering::AcqRel) {
            if let Some(path) = &path {
                let flushed = out.flush();
                note_write(&mut failing, flushed, Some(path));
                match open(path) {
                    Ok(file) => {
                        out = BufWriter::with_capacity(FILE_BUFFER, Box::new(file));
                        failing = false;
                        log::info!("access log: reopened {}", path.display());
                    }
                    // Keep writing to the old file: a moved log is better than a lost one.
                    Err(e) => log::error!("{e}; still writing to the file opened before"),
                }
            }
        }
        let drops = dropped.load(Ordering::Relaxed);
        if drops > reported_drops {
            log::warn!("access log: {} record(s) dropped: the writer could not keep up", drops - reported_drops);
            reported_drops = drops;
        }
        if stop {
            return;
        }
    }
}

/// Logs the first failure of a run of failed writes (a full disk would otherwise log once per line).
fn note_write(failing: &mut bool, result: io::Result<()>, path: Option<&Path>) {
    match result {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            let what = path.map_or_else(|| "standard output".to_string(), |p| p.display().to_string());
            log::error!("access log: writing to {what} failed: {e}");
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            time: at(1_700_000_000, 42),
            client: IpAddr::from([203, 0, 113, 9]),
            method: "GET",
            target: "/index.html?q=1",
            version: 1,
            status: 200,
            body_bytes: 5120,
            duration: Duration::from_micros(1234),
            backend: Some("10.0.1.12:8080"),
            referer: Some(b"http://example.com/start"),
            user_agent: Some(b"curl/8.5.0"),
        }
    }

    fn line(r: &AccessRecord<'_>, format: AccessLogFormat) -> String {
        r.line(format).to_string()
    }

    #[test]
    fn seed_line_is_the_original_proxys() {
        assert_eq!(
            line(&record(), AccessLogFormat::Seed),
            "[*] Request done: 203.0.113.9 => GET /index.html?q=1 200 0.0012s <= 10.0.1.12:8080"
        );
        let none = AccessRecord { backend: None, status: 502, ..record() };
        assert!(line(&none, AccessLogFormat::Seed).ends_with(" 502 0.0012s <= -"));
    }

    #[test]
    fn combined_line() {
        assert_eq!(
            line(&record(), AccessLogFormat::Combined),
            "203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html?q=1 HTTP/1.1\" 200 5120 \
             \"http://example.com/start\" \"curl/8.5.0\""
        );
        // Missing or empty fields are `-`; quotes, backslashes, control and non-ASCII bytes are escaped.
        let odd = AccessRecord {
            client: IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            version: 0,
            referer: Some(b""),
            user_agent: Some(b"a\"b\\c\x01\xc3\xa9"),
            body_bytes: 0,
            ..record()
        };
        assert_eq!(
            line(&odd, AccessLogFormat::Combined),
            "::1 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html?q=1 HTTP/1.0\" 200 0 \"-\" \
             \"a\\x22b\\x5Cc\\x01\\xC3\\xA9\""
        );
        let bare = AccessRecord { referer: None, user_agent: None, ..record() };
        assert!(line(&bare, AccessLogFormat::Combined).ends_with(" 200 5120 \"-\" \"-\""));
    }

    #[test]
    fn json_line() {
        assert_eq!(
            line(&record(), AccessLogFormat::Json),
            "{\"time\":\"2023-11-14T22:13:20.042Z\",\"client\":\"203.0.113.9\",\"method\":\"GET\",\
             \"path\":\"/index.html?q=1\",\"status\":200,\"bytes\":5120,\"duration_ms\":1.234,\
             \"backend\":\"10.0.1.12:8080\",\"user_agent\":\"curl/8.5.0\",\"referer\":\"http://example.com/start\"}"
        );
        let odd = AccessRecord {
            backend: None,
            user_agent: Some("q\"b\\s\n\r\t\x01\x7f é 日本 \u{2028}".as_bytes()),
            referer: Some(b"\xff"),
            ..record()
        };
        let text = line(&odd, AccessLogFormat::Json);
        assert!(text.contains(r#""backend":null,"#), "{text}");
        assert!(text.contains(r#""user_agent":"q\"b\\s\n\r\t\u0001\u007f é 日本 "#), "{text}");
        assert!(text.ends_with("\"referer\":\"\u{fffd}\"}"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn calendar() {
        let rfc = |secs, millis| {
            let mut s = String::new();
            write_rfc3339(&mut s, at(secs, millis)).unwrap();
            s
        };
        assert_eq!(rfc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(rfc(951_868_799, 0), "2000-02-29T23:59:59.000Z");
        assert_eq!(rfc(1_000_000_000, 0), "2001-09-09T01:46:40.000Z");
        assert_eq!(rfc(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(rfc(1_798_761_599, 0), "2026-12-31T23:59:59.000Z");
        let mut s = String::new();
        write_rfc3339(&mut s, UNIX_EPOCH - Duration::from_secs(5)).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000Z", "a clock before 1970 does not panic");
        let mut clf = String::new();
        write_clf_time(&mut clf, at(1_709_164_800, 0)).unwrap();
        assert_eq!(clf, "29/Feb/2024:00:00:00 +0000");
    }

    #[test]
    fn check_needs_the_directory() {
        assert!(AccessLogTarget::Logger.check().is_ok());
        assert!(AccessLogTarget::Stdout.check().is_ok());
        let missing = AccessLogTarget::File(PathBuf::from("/nonexistent-pibl-dir/access.log"));
        assert_eq!(
            missing.check().map_err(|e| e.to_string()),
            Err("access_log_file: directory /nonexistent-pibl-dir does not exist; create it or choose another file"
                .to_string())
        );
        let dir = std::env::temp_dir();
        assert!(AccessLogTarget::File(dir.join(format!("pibl-check-{}.log", std::process::id()))).check().is_ok());
        assert!(AccessLogTarget::File(dir).check().is_err(), "a directory cannot be appended to");
    }
}
