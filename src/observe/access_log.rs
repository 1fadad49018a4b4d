//! The access log: one line per request, in the configured format, to the logger, stdout, or a file
//! that one writer thread appends to and reopens on SIGUSR1. What a line says and how each format
//! escapes it is the `record` module's.

mod record;

pub use record::AccessRecord;

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::background::Background;
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

// Here rather than beside the record: the format is the log's setting; the record only knows how to
// write itself in each.
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
        match self.format {
            AccessLogFormat::Seed => self.record.write_seed(f),
            AccessLogFormat::Combined => self.record.write_combined(f),
            AccessLogFormat::Json => self.record.write_json(f),
        }
    }
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
    Writer { tx: Sender<Msg>, thread: Mutex<Option<Background>> },
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
            // Stopped by `Msg::Stop` behind the lines already queued, not by the signal, so that
            // every line logged before close() is written.
            Background::spawn("pibl-access-log", move |_| write_loop(&rx, output, &reopen, &dropped))
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
            if let Some(writer) = thread.lock().take() {
                writer.stop();
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
    use std::net::IpAddr;
    use std::time::UNIX_EPOCH;

    #[test]
    fn line_is_written_in_the_chosen_format() {
        let record = AccessRecord {
            time: UNIX_EPOCH,
            client: IpAddr::from([127, 0, 0, 1]),
            method: "GET",
            target: "/",
            version: 1,
            status: 204,
            body_bytes: 0,
            duration: Duration::ZERO,
            backend: None,
            referer: None,
            user_agent: None,
        };
        assert!(record.line(AccessLogFormat::Seed).to_string().starts_with("[*] Request done: 127.0.0.1 => GET / 204"));
        assert!(record.line(AccessLogFormat::Combined).to_string().starts_with("127.0.0.1 - - [01/Jan/1970:00:00:00"));
        assert!(record.line(AccessLogFormat::Json).to_string().starts_with("{\"time\":\"1970-01-01T00:00:00.000Z\""));
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
