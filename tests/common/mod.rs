//! Shared helpers for the integration tests: scriptable backends on `127.0.0.1:0` that count what
//! they receive, a proxy started on an ephemeral port, and a small raw HTTP client.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pibl::config::{BackendAddr, Config};
use pibl::Server;

/// Longest any helper waits for anything; tests poll conditions instead of sleeping.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or `WAIT` passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// `/proc/<pid>` of a process numbered as this test sees it (`Child::id()`, a shell's `$!`); `None`
/// when no such process is running.
///
/// Some sandboxes (CI's among them) run the tests in a PID namespace of their own but leave the
/// host's `/proc` mounted, where the same process has another number and `/proc/<pid>` is another
/// process or none. There the entry is found by the process's `NSpid` line (its id in each
/// namespace, innermost last) among the processes in this test's own PID namespace.
pub fn proc_dir(pid: u32) -> Option<PathBuf> {
    let own = std::process::id();
    let proc_names_us = fs::read_link("/proc/self").is_ok_and(|link| link.to_str() == Some(own.to_string().as_str()));
    if proc_names_us {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        return dir.exists().then_some(dir);
    }
    let our_namespace = fs::read_link("/proc/self/ns/pid").ok()?;
    fs::read_dir("/proc").ok()?.flatten().map(|entry| entry.path()).find(|dir| {
        let innermost_id = fs::read_to_string(dir.join("status")).ok().and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
            line.split_whitespace().last()?.parse::<u32>().ok()
        });
        innermost_id == Some(pid) && fs::read_link(dir.join("ns/pid")).is_ok_and(|ns| ns == our_namespace)
    })
}

/// How many descriptors process `pid` (numbered as in [`proc_dir`]) holds open; panics when the
/// process is not found, so a count can never pass by reading nothing.
pub fn open_fds(pid: u32) -> usize {
    let dir = proc_dir(pid).unwrap_or_else(|| panic!("process {pid} is not running (or not visible in /proc)"));
    fs::read_dir(dir.join("fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("read {}/fd: {e}", dir.display()))
}

/// A request as a test backend received it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a test backend does with a request.
pub enum Reply {
    /// Writes these bytes and keeps the connection for the next request.
    Raw(Vec<u8>),
    /// Writes these bytes and closes.
    RawThenClose(Vec<u8>),
    /// Closes without answering.
    Close,
    /// Never answers; holds the connection until the proxy gives up.
    Silent,
    /// Custom behaviour on the socket, then close.
    With(Box<dyn FnOnce(&mut TcpStream) + Send>),
}

/// A 200 response with this body and a `Content-Length`.
pub fn ok(body: &str) -> Reply {
    Reply::Raw(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes())
}

type Handler = dyn Fn(&Received) -> Reply + Send + Sync;

/// A real HTTP/1.1 server on an ephemeral loopback port whose answers each test scripts.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl TestBackend {
    pub fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test backend");
        let addr = listener.local_addr().unwrap();
        let handler: Arc<Handler> = Arc::new(handler);
        let backend = TestBackend {
            addr,
            requests: Arc::default(),
            connections: Arc::default(),
            received: Arc::default(),
            stop: Arc::default(),
        };
        let (requests, connections, received, stop) =
            (backend.requests.clone(), backend.connections.clone(), backend.received.clone(), backend.stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (handler, requests, received, stop) =
                    (handler.clone(), requests.clone(), received.clone(), stop.clone());
                thread::spawn(move || serve(stream, &*handler, &requests, &received, &stop));
            }
        });
        backend
    }

    /// A backend that answers every request with its `name` as the body.
    pub fn named(name: &'static str) -> TestBackend {
        TestBackend::start(move |_| ok(name))
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Received {
        self.received.lock().unwrap().last().cloned().expect("backend received a request")
    }

    /// Stops accepting and closes the listener: connections to the port are refused from now on.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        // The accept thread drops the listener when it sees the flag; wait until the port refuses.
        wait_until("the stopped backend refuses connections", || TcpStream::connect(self.addr).is_err());
    }
}

fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    requests: &AtomicUsize,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf) else { return };
        if stop.load(Ordering::Acquire) {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        received.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Raw(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::RawThenClose(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Close => return,
            Reply::Silent => {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            Reply::With(f) => {
                f(&mut stream);
                return;
            }
        }
    }
}

/// Reads one request (head and body, `Content-Length` or chunked) with `httparse`.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let (mut req, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = parsed.parse(buf) {
            let req = Received {
                method: parsed.method?.to_string(),
                target: parsed.path?.to_string(),
                version: parsed.version?,
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                    .collect(),
                body: Vec::new(),
            };
            break (req, len);
        }
        if !fill(stream, buf) {
            return None;
        }
    };
    buf.drain(..head_len);
    if let Some(len) = req.header("content-length") {
        let len: usize = len.trim().parse().ok()?;
        while buf.len() < len {
            if !fill(stream, buf) {
                return None;
            }
        }
        req.body = buf.drain(..len).collect();
    } else if req.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        req.body = read_chunked(stream, buf)?;
    }
    Some(req)
}

fn fill<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Decodes a chunked body from `buf`/`stream`, written independently of pibl's decoder.
fn read_chunked<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                break pos;
            }
            if !fill(stream, buf) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let end = loop {
                    if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                        break pos;
                    }
                    if !fill(stream, buf) {
                        return None;
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf) {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A config for tests: loopback, the given backends, small timeouts, no access log.
pub fn test_config(backends: &[SocketAddr]) -> Config {
    Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        threads: 4,
        backends: backends.iter().map(|a| BackendAddr::plain(a.to_string(), *a)).collect(),
        backend_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        access_log: false,
        ..Config::default()
    }
}

/// Starts a proxy on `127.0.0.1:0`.
pub fn start_proxy(config: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    Server::start_on(listener, config).expect("start proxy")
}

/// A response as the test client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that reads responses with its own buffer (for pipelining and keep-alive).
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// A client on a connection the test opened itself.
    pub fn from_stream(stream: TcpStream) -> Client {
        Client { stream, buf: Vec::new() }
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.stream.write_all(bytes).expect("send request");
        self
    }

    /// `GET path` with keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response(false).expect("response")
    }

    /// Reads one response; `head_only` for answers to HEAD.
    pub fn read_response(&mut self, head_only: bool) -> io::Result<Response> {
        read_response_from(&mut self.stream, &mut self.buf, head_only)
    }

    /// True when the server has closed the connection (EOF or reset) and sent nothing more.
    /// Drops what was read past the last whole response (a body cut short), so `is_closed` looks
    /// at the connection alone.
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
    }

    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    pub fn close_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Reads one response from `stream` (any byte stream: TCP, TLS), with `buf` holding what was read
/// past the previous one; `head_only` for answers to HEAD.
pub fn read_response_from<S: Read>(stream: &mut S, buf: &mut Vec<u8>, head_only: bool) -> io::Result<Response> {
    let (status, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                    .collect();
                break (parsed.code.unwrap_or(0), headers, len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        if !fill(stream, buf) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
    };
    buf.drain(..head_len);
    let mut res = Response { status, headers, body: Vec::new() };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(res);
    }
    if res.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        res.body = read_chunked(stream, buf)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body cut short"))?;
    } else if let Some(len) = res.header("content-length") {
        let len: usize = len.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
        while buf.len() < len {
            if !fill(stream, buf) {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
            }
        }
        res.body = buf.drain(..len).collect();
    } else {
        while fill(stream, buf) {}
        res.body = std::mem::take(buf);
    }
    Ok(res)
}

/// Sends `bytes` on a new connection and reads one response.
pub fn request(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut client = Client::connect(addr);
    client.send(bytes);
    client.read_response(false).expect("response")
}

/// `GET path` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

/// Deterministic pseudo-random bytes, so a corrupted byte shows up.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Encodes `body` as chunks of `size` bytes.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A fresh directory per test (the process id keeps concurrent `cargo test` runs apart), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("pibl-ops-{}-{}-{name}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(unique);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The real `proxy` binary on a free loopback port; killed on drop so a failing test leaves nothing behind.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The management API's address.
    pub api_addr: SocketAddr,
}

impl ProxyProcess {
    /// Writes a config for `backend` with `extra` keys and starts the proxy. The port is found free
    /// and then released, so another process may take it first: then the proxy exits and we try another.
    pub fn start(dir: &TempDir, backend: SocketAddr, extra: &str) -> ProxyProcess {
        for _ in 0..5 {
            let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let (port, api_port) = (free(), free());
            let config = dir.file(
                "parser.ini",
                &format!(
                    "[DEFAULT]\nbind = 127.0.0.1\nport = {port}\napi_port = {api_port}\ndatabase = {}\nthreads = 2\n\
                     ip_server1 = {backend}\nshutdown_grace = 2\nlog_level = info\n{extra}",
                    dir.0.join("pibl.db").display(),
                ),
            );
            let stderr = fs::File::create(dir.0.join("proxy.stderr")).expect("create stderr file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn the proxy binary");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + WAIT;
            loop {
                // Started means the start-up line is logged: a proxy whose API port was taken in the meantime
                // has bound its data port (which then accepts) before it fails and exits.
                let log = fs::read_to_string(dir.0.join("proxy.stderr")).unwrap_or_default();
                if log.contains("Server started successfully") {
                    return ProxyProcess { child, addr, api_addr: SocketAddr::from(([127, 0, 0, 1], api_port)) };
                }
                if child.try_wait().expect("poll the proxy").is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        panic!("the proxy did not start: {}", fs::read_to_string(dir.0.join("proxy.stderr")).unwrap_or_default());
    }

    /// Sets the running proxy's soft open-file limit (`RLIMIT_NOFILE`) with `prlimit --pid`, and
    /// reads it back from `/proc/<pid>/limits`.
    pub fn set_open_file_limit(&self, soft: u64) {
        let pid = self.child.id();
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            .arg(format!("--nofile={soft}:"))
            .status()
            .expect("run prlimit (util-linux)");
        assert!(status.success(), "prlimit --pid {pid} --nofile={soft}: failed");
        let dir = proc_dir(pid).unwrap_or_else(|| panic!("the proxy (pid {pid}) is not running"));
        let limits = fs::read_to_string(dir.join("limits")).expect("read /proc/<pid>/limits");
        let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
        let now = open_files.split_whitespace().nth(3);
        assert_eq!(now, Some(soft.to_string().as_str()), "the proxy's limit after prlimit: {open_files}");
    }

    /// What the proxy wrote to its standard error so far.
    pub fn stderr(&self, dir: &TempDir) -> String {
        fs::read_to_string(dir.0.join("proxy.stderr")).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// The management API: pibl started whole (data plane, API, background threads) on ephemeral ports
// with a temporary database, and a JSON client for it.
// ---------------------------------------------------------------------------------------------------------

/// A database path in the temp dir, unique per process and call; the file (and its WAL files) is
/// removed on drop.
pub struct TempDb(pub std::path::PathBuf);

impl TempDb {
    pub fn new(name: &str) -> TempDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("pibl-test-{}-{}-{name}.db", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let db = TempDb(std::env::temp_dir().join(unique));
        db.remove();
        db
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A test config with the management API on: the database at `db`, an admin, quick health checks,
/// and a throttle loose enough not to get in the way of tests that are not about it.
pub fn api_config(backends: &[SocketAddr], db: &TempDb) -> Config {
    Config {
        database: db.0.clone(),
        admins: vec![ADMIN.to_string()],
        auth_rate: 10_000,
        health_interval: Duration::from_millis(50),
        ..test_config(backends)
    }
}

/// The admin of [`api_config`].
pub const ADMIN: &str = "admin@pibl.test";

/// Makes [`ADMIN`] (password `password`) an admin as `proxy --admin add` does on the host, and
/// returns a token for it. Registering the address grants nothing.
pub fn admin_login(pibl: &pibl::Pibl) -> String {
    let now_ms = pibl.state().clock.now_ms();
    pibl::store::admins::add(&pibl.state().store, ADMIN, "password", now_ms).expect("make the admin");
    login(pibl.api_addr(), ADMIN, "password")
}

/// Starts pibl on `127.0.0.1:0` ports with `clock`.
pub fn start_pibl(config: Config, clock: pibl::clock::Clock) -> pibl::Pibl {
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let api = TcpListener::bind("127.0.0.1:0").expect("bind api");
    pibl::Pibl::start_on(proxy, api, config, clock).expect("start pibl")
}

impl Response {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A request as curl sends it for the seed's examples: `Content-Type: application/json` when there
/// is a body, `Authorization: JWT <token>` when there is a token.
pub fn curl_request(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost:5000\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: JWT {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or("").as_bytes());
    out
}

/// Sends one API request on a new connection (as curl would) and reads the answer.
pub fn api(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Response {
    request(addr, &curl_request(method, path, token, body))
}

/// Registers `email` (password `password`) and returns a token for it.
pub fn register_and_login(addr: SocketAddr, email: &str) -> String {
    let creds = format!(r#"{{"email":"{email}","password":"password"}}"#);
    let res = api(addr, "POST", "/api/users", None, Some(&creds));
    assert_eq!(res.status, 201, "register {email}: {}", res.text());
    login(addr, email, "password")
}

/// Logs in and returns the token.
pub fn login(addr: SocketAddr, email: &str, password: &str) -> String {
    let creds = format!(r#"{{"email":"{email}","password":"{password}"}}"#);
    let res = api(addr, "POST", "/api/auth", None, Some(&creds));
    assert_eq!(res.status, 200, "login {email}: {}", res.text());
    res.json()["access_token"].as_str().expect("access_token").to_string()
}

/// The body of `POST /api/apps/<id>` for an endpoint on `addr`.
pub fn endpoint_body(addr: SocketAddr, statuspath: &str) -> String {
    format!(r#"{{"host":"{}","port":{},"statuspath":"{statuspath}"}}"#, addr.ip(), addr.port())
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL: a fresh database per test on the server `PIBL_TEST_PG_URL` names
// (`eval "$(scripts/pg-test-cluster.sh start)"` starts a throwaway one).
// ---------------------------------------------------------------------------------------------------------

/// The PostgreSQL server to use, or `None` after a loud notice (a failure in CI).
pub fn pg_server_url() -> Option<String> {
    match std::env::var("PIBL_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run these tests: start PostgreSQL with scripts/pg-test-cluster.sh and export PIBL_TEST_PG_URL"
            );
            eprintln!(
                "\n*** SKIPPED: no PostgreSQL (PIBL_TEST_PG_URL is not set). Run \
                 `eval \"$(scripts/pg-test-cluster.sh start)\"` first to run the cluster tests. ***\n"
            );
            None
        }
    }
}

/// `url` with its database name replaced.
fn with_dbname(url: &str, name: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{}/{name}", base.rsplit_once('/').map_or(base, |(b, _)| b))
}

/// A new database on the server, dropped (whoever is still connected) on drop.
pub struct TempPg {
    admin: String,
    name: String,
    pub url: String,
}

impl TempPg {
    pub fn on(admin: &str, tag: &str) -> TempPg {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("pibl_test_{}_{}_{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut client = ::postgres::Client::connect(admin, ::postgres::NoTls).expect("connect to PIBL_TEST_PG_URL");
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create the test database");
        TempPg { admin: admin.to_string(), url: with_dbname(admin, &name), name }
    }

    pub fn new(tag: &str) -> Option<TempPg> {
        pg_server_url().map(|admin| TempPg::on(&admin, tag))
    }
}

impl Drop for TempPg {
    fn drop(&mut self) {
        if let Ok(mut c) = ::postgres::Client::connect(&self.admin, ::postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// `proxy --demo` as a subprocess, as the README starts it.
// ---------------------------------------------------------------------------------------------------------

/// `proxy --demo` running in a directory on free ports (`PIBL_DEMO_PORTS`: proxy, API, three
/// backends); killed on drop.
pub struct DemoProcess {
    pub child: Child,
    pub ports: [u16; 5],
}

impl DemoProcess {
    /// Starts the demo in `dir` (its database and admin file land there) and waits for its last
    /// start-up line. Another process may take a chosen port first: the demo then exits, or its
    /// backend falls back to another port, and we try other ports.
    pub fn start(dir: &TempDir) -> DemoProcess {
        for _ in 0..5 {
            let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let ports = [free(), free(), free(), free(), free()];
            match DemoProcess::launch(dir, &[], ports) {
                Ok(demo) if !demo.log(dir).contains("is taken by another program") => return demo,
                _ => {}
            }
        }
        panic!("the demo did not start: {}", fs::read_to_string(dir.0.join("demo.log")).unwrap_or_default());
    }

    /// One try: `proxy --demo ARGS` on `ports` in `dir`, logging to `dir/demo.log`; the log when it
    /// exits before its last start-up line.
    pub fn launch(dir: &TempDir, args: &[&str], ports: [u16; 5]) -> Result<DemoProcess, String> {
        let log_path = dir.0.join("demo.log");
        let list = ports.map(|p| p.to_string()).join(",");
        let log = fs::File::create(&log_path).expect("create the demo log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .arg("--demo")
            .args(args)
            .env("PIBL_DEMO_PORTS", &list)
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start proxy --demo");
        let deadline = Instant::now() + 3 * WAIT;
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("demo: admin admin@demo.local") {
                return Ok(DemoProcess { child, ports });
            }
            if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(text);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the demo has logged so far.
    pub fn log(&self, dir: &TempDir) -> String {
        fs::read_to_string(dir.0.join("demo.log")).unwrap_or_default()
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[0]))
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------------
// A backend that records the raw bytes it receives, for tests of exactly what pibl sends upstream.
// ---------------------------------------------------------------------------------------------------------

/// A backend that keeps every byte it receives, in arrival order across its connections, and
/// answers each complete request (framed by `Content-Length` or chunked) with `200 ok`.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections the other side has closed (or that broke).
    pub closed: Arc<AtomicUsize>,
}

impl RawBackend {
    pub fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
        let addr = listener.local_addr().unwrap();
        let (received, connections, closed) =
            (Arc::<Mutex<Vec<u8>>>::default(), Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let (log, count, ended) = (received.clone(), connections.clone(), closed.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (log, ended) = (log.clone(), ended.clone());
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(WAIT));
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 65536];
                    'conn: while let Ok(n @ 1..) = stream.read(&mut chunk) {
                        log.lock().unwrap().extend_from_slice(&chunk[..n]);
                        pending.extend_from_slice(&chunk[..n]);
                        while let Some(used) = complete_request(&pending) {
                            let answer: &[u8] = match pending.starts_with(b"HEAD ") {
                                true => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                                false => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                            };
                            pending.drain(..used);
                            if stream.write_all(answer).is_err() {
                                break 'conn;
                            }
                        }
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend { addr, received, connections, closed }
    }

    /// Everything received so far, as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.received.lock().unwrap().clear();
        self.connections.store(0, Ordering::SeqCst);
        self.closed.store(0, Ordering::SeqCst);
    }
}

/// The length of the complete request at the start of `buf` (head and body), if it is all there.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else { return None };
    let field = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
    };
    if let Some(len) = field("content-length") {
        let end = head + len.trim().parse::<usize>().ok()?;
        return (buf.len() >= end).then_some(end);
    }
    if field("transfer-encoding").is_none() {
        return Some(head);
    }
    let mut at = head;
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&buf[at..at + line]).split(';').next()?, 16).ok()?;
        at += line + 2;
        if size == 0 {
            // No trailers from pibl: the empty line follows.
            return (buf.len() >= at + 2).then_some(at + 2);
        }
        at += size + 2;
        if buf.len() < at {
            return None;
        }
    }
}

/// Starts a browser script (`node ...`) with piped stdin and stdout; each stdout line is echoed as
/// `script: ...` and handed over on the returned channel, so a test waits for the script's lines with
/// a deadline instead of sleeping.
pub fn spawn_script(command: &mut Command, what: &str) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e} (apt-get install nodejs npm)"));
    let stdout = child.stdout.take().expect("script stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("script: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

// ---------------------------------------------------------------------------------------------------------
// Streams that must stall, and a WebSocket backend (the loops' tunnels, over plain and TLS).
// ---------------------------------------------------------------------------------------------------------

/// A backend that answers every request with `total` bytes of [`pattern`] and counts in the
/// The most the kernel can hold on a proxied download's way (client and backend connections each
/// with a receive and a send buffer, from `net.ipv4.tcp_rmem`/`tcp_wmem`'s maxima, which loopback
/// autotuning reaches): what a backend writes beyond this toward a client that reads nothing is
/// what the proxy itself buffered.
pub fn kernel_buffer_ceiling() -> usize {
    let max_of = |name: &str, fallback: usize| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
            .unwrap_or(fallback)
    };
    2 * max_of("tcp_rmem", 6 << 20) + 2 * max_of("tcp_wmem", 4 << 20)
}

/// What a proxy may hold of a download on its own beyond the kernel's buffers: a few windows, far
/// less than the body a test sends past [`kernel_buffer_ceiling`].
pub const PROXY_HOLDS_AT_MOST: usize = 8 << 20;

/// returned counter the bytes its socket took, so a test sees when the proxy stops reading it.
pub fn counting_backend(total: usize) -> (TestBackend, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    let backend = TestBackend::start(move |_| {
        let counter = Arc::clone(&counter);
        Reply::With(Box::new(move |stream: &mut TcpStream| {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            for piece in pattern(total).chunks(64 * 1024) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
        }))
    });
    (backend, written)
}

/// The body of a `total`-byte answer whose first bytes, `first`, were read already: reads the
/// rest of the head and then exactly `total` body bytes from `src`.
pub fn read_body_after(src: &mut impl Read, first: &[u8], total: usize) -> Vec<u8> {
    let mut rest = Vec::with_capacity(total + 1024);
    rest.extend_from_slice(first);
    let mut buf = vec![0u8; 256 * 1024];
    let head_end = loop {
        if let Some(pos) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = src.read(&mut buf).expect("read the head");
        assert!(n > 0, "connection closed mid-head");
        rest.extend_from_slice(&buf[..n]);
    };
    while rest.len() - head_end < total {
        let n = src.read(&mut buf).expect("read the body");
        assert!(n > 0, "connection closed mid-body after {} bytes", rest.len() - head_end);
        rest.extend_from_slice(&buf[..n]);
    }
    rest.split_off(head_end)
}

/// Waits until `counter` has not moved for a while: the writer behind it is blocked.
pub fn wait_until_stalled(what: &str, counter: &AtomicU64) -> u64 {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut still) = (counter.load(Ordering::SeqCst), 0);
    while still < 25 {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
        let now = counter.load(Ordering::SeqCst);
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
    }
    last
}

/// A WebSocket echo server that also answers plain HTTP requests with `ok`; `die_after` closes
/// each tunnel's socket without a close frame after that many echoes.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub tunnels: Arc<AtomicUsize>,
}

impl WsBackend {
    pub fn start(die_after: Option<usize>) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&tunnels);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let counter = Arc::clone(&counter);
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || serve_ws(stream, die_after, &counter))
                    .unwrap();
            }
        });
        WsBackend { addr, tunnels }
    }
}

fn serve_ws(mut stream: TcpStream, die_after: Option<usize>, tunnels: &AtomicUsize) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // Peek at the head: an upgrade goes to tungstenite, anything else gets a plain answer.
    let mut head = [0u8; 4096];
    let head = loop {
        let Ok(n) = stream.peek(&mut head) else { return };
        if n == 0 {
            return;
        }
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        }
        thread::sleep(Duration::from_millis(1));
    };
    if !head.contains("upgrade: websocket") {
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        return;
    }
    let Ok(mut ws) = tungstenite::accept(stream) else { return };
    tunnels.fetch_add(1, Ordering::SeqCst);
    let mut echoed = 0;
    loop {
        if die_after.is_some_and(|n| echoed >= n) {
            // Dies: the socket goes without a close frame.
            return;
        }
        match ws.read() {
            Ok(msg @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                if ws.send(msg).is_err() {
                    return;
                }
                echoed += 1;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
