//! Faults with real processes and sockets: a backend process killed under load, backends that hang,
//! stop half-way or answer garbage, clients that vanish mid-transfer, a flood of dropped
//! connections, a proxy out of file descriptors, and the API's database on a full disk or a read-only
//! file system.

#[macro_use]
mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// ------------------------------------------------------------------------------------------------
// Backends that die
// ------------------------------------------------------------------------------------------------

#[test]
fn a_backend_killed_under_load_fails_no_idempotent_request() {
    // Each backend is a process of its own (a `proxy` over an in-process server that takes a moment
    // per request, so requests are in flight on it when it dies).
    let working = || {
        TestBackend::start(|_| {
            Reply::With(Box::new(|s| {
                thread::sleep(Duration::from_millis(2));
                let _ = s.write_all(OK);
            }))
        })
    };
    let (inner_a, inner_b) = (working(), working());
    let (dir_a, dir_b) = (TempDir::new("killed-a"), TempDir::new("killed-b"));
    let mut a = ProxyProcess::start(&dir_a, inner_a.addr, "access_log = off\nttl = 0\n");
    let b = ProxyProcess::start(&dir_b, inner_b.addr, "access_log = off\nttl = 0\n");
    let mut config = test_config(&[a.addr, b.addr]);
    config.ttl = Duration::ZERO;
    config.threads = 8;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    const CLIENTS: usize = 4;
    const EACH: usize = 150;
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (done, failures) = (done.clone(), failures.clone());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..EACH {
                    client.send(format!("GET /{c}/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                    match client.read_response(false) {
                        Ok(res) if res.status == 200 && res.body == b"ok" => {}
                        Ok(res) => {
                            failures.lock().unwrap().push(format!("GET /{c}/{i}: {} {}", res.status, res.text()))
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(format!("GET /{c}/{i}: {e}"));
                            client = Client::connect(addr);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    wait_until("a third of the requests are done", || done.load(Ordering::SeqCst) >= CLIENTS * EACH / 3);
    a.child.kill().expect("SIGKILL the backend process");
    let _ = a.child.wait();
    let served_by_a = inner_a.requests();
    for client in clients {
        client.join().expect("client thread");
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failed request(s): {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(served_by_a > 0, "backend A served nothing before it was killed");
    assert!(inner_b.requests() > CLIENTS * EACH / 2, "backend B took over: {}", inner_b.requests());
    eprintln!(
        "SIGKILL under load: {} GETs, 0 failed; backend A served {served_by_a} before it died, B {}",
        CLIENTS * EACH,
        inner_b.requests()
    );
    drop(b);
    proxy.shutdown();
}

#[test]
fn a_request_without_an_answer_goes_to_another_backend_only_if_idempotent() {
    // `dead` reads each request and closes without a byte of answer, as a backend dying would.
    let dead = TestBackend::start(|_| Reply::Close);
    let live = TestBackend::named("live");
    let mut config = test_config(&[dead.addr, live.addr]);
    config.ttl = Duration::ZERO;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    for i in 0..4 {
        let res = get(addr, &format!("/get/{i}"));
        assert_eq!((res.status, res.text().as_str()), (200, "live"), "GET {i}");
    }
    assert!(dead.requests() >= 1, "round robin sent no GET to the dead backend");
    let dead_gets = dead.requests();

    let mut statuses = Vec::new();
    for i in 0..4 {
        let res = request(addr, format!("POST /post/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes());
        statuses.push(res.status);
    }
    let failed = statuses.iter().filter(|&&s| s == 502).count();
    let dead_posts = dead.requests() - dead_gets;
    assert!(failed >= 1, "no POST reached the dead backend: {statuses:?}");
    assert_eq!(failed, dead_posts, "each POST the dead backend took is a 502, never retried: {statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count() + failed, 4, "{statuses:?}");
    let live_posts = live.received.lock().unwrap().iter().filter(|r| r.method == "POST").count();
    assert_eq!(live_posts, 4 - failed, "a failed POST was sent again");
    proxy.shutdown();

    // Retried once, not around the pool: with three dead backends a GET costs two of them.
    let more: Vec<_> = (0..3).map(|_| TestBackend::start(|_| Reply::Close)).collect();
    let mut config = test_config(&more.iter().map(|b| b.addr).collect::<Vec<_>>());
    config.ttl = Duration::ZERO;
    let proxy = start_proxy(config);
    let res = get(proxy.local_addr(), "/x");
    assert_eq!(res.status, 502, "{}", res.text());
    assert!(res.text().contains("closed the connection without answering"), "{}", res.text());
    assert_eq!(more.iter().map(TestBackend::requests).sum::<usize>(), 2);
    proxy.shutdown();
}

// ------------------------------------------------------------------------------------------------
// Backends that answer wrongly
// ------------------------------------------------------------------------------------------------

#[test]
fn broken_backends_get_502_or_504_in_time_nothing_cached_and_others_unaffected() {
    let healed = Arc::new(AtomicBool::new(false));
    let fresh = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nfresh".to_vec();
    let backend = {
        let healed = healed.clone();
        TestBackend::start(move |req| {
            if healed.load(Ordering::SeqCst) || req.target.starts_with("/ok") {
                return Reply::Raw(fresh.clone());
            }
            match req.target.as_str() {
                "/silent" => Reply::Silent,
                "/half-head-close" => {
                    Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Le".to_vec())
                }
                "/half-head-hang" => Reply::With(Box::new(|s| {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nCache-Cont");
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                })),
                "/garbage" => Reply::RawThenClose(b"\x16\x03\x01\x02\x00 not HTTP at all\r\n\r\n".to_vec()),
                "/short" => Reply::RawThenClose(
                    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100\r\n\r\nonly ten b".to_vec(),
                ),
                _ => Reply::Close,
            }
        })
    };
    let timeout = Duration::from_secs(1);
    let mut config = test_config(&[backend.addr]);
    config.backend_timeout = timeout;
    config.threads = 16;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    // (path, status; 0: the head went out, then the connection closed mid-body)
    let faults: [(&str, u16); 5] =
        [("/silent", 504), ("/half-head-close", 502), ("/half-head-hang", 504), ("/garbage", 502), ("/short", 0)];
    let running: Vec<_> = faults
        .iter()
        .map(|&(path, _)| {
            thread::spawn(move || {
                let started = Instant::now();
                let mut client = Client::connect(addr);
                client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                let answer = client.read_response(false).map(|res| (res.status, res.text()));
                // A cut body may leave what arrived of it unread (the loops relay it as it comes).
                if answer.is_err() {
                    client.discard_buffered();
                }
                (answer, started.elapsed(), client.is_closed())
            })
        })
        .collect();
    wait_until("every broken request reached the backend", || backend.requests() >= faults.len());
    // Other clients are served while the broken answers are pending.
    for i in 0..50 {
        let res = get(addr, &format!("/ok/{i}"));
        assert_eq!((res.status, res.text().as_str()), (200, "fresh"), "/ok/{i}");
    }
    for ((path, status), thread) in faults.iter().zip(running) {
        let (answer, elapsed, closed) = thread.join().expect("client thread");
        match status {
            0 => {
                assert!(answer.is_err(), "{path}: the cut body must not look complete: {answer:?}");
                assert!(closed, "{path}: the connection stays open after a cut body");
            }
            504 => {
                let (got, text) = answer.unwrap_or_else(|e| panic!("{path}: {e}"));
                assert_eq!(got, 504, "{path}: {text}");
                assert!(elapsed >= timeout && elapsed < timeout * 4, "{path}: 504 after {elapsed:?}");
            }
            _ => {
                let (got, text) = answer.unwrap_or_else(|e| panic!("{path}: {e}"));
                assert_eq!(got, *status, "{path}: {text}");
                assert!(elapsed < timeout, "{path}: a broken answer took {elapsed:?}");
            }
        }
    }
    // Nothing of the broken answers was stored: each path now goes to the (healed) backend.
    healed.store(true, Ordering::SeqCst);
    let before = backend.requests();
    for (path, _) in faults {
        let res = get(addr, path);
        assert_eq!((res.status, res.text().as_str(), res.header("x-cache")), (200, "fresh", Some("MISS")), "{path}");
    }
    assert_eq!(backend.requests() - before, faults.len());
    proxy.shutdown();
}

#[test]
fn bytes_past_a_response_s_end_never_answer_the_next_request() {
    // The backend says `Content-Length: 2`, and once pibl has pooled the connection, sends a whole
    // second response nobody asked for. Read as the answer to the next request, it would hand a
    // forged response to another client.
    let (go, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let backend = {
        let (go, written) = (go.clone(), written.clone());
        TestBackend::start(move |req| {
            if req.target != "/long" {
                return ok("next");
            }
            let (go, written) = (go.clone(), written.clone());
            Reply::With(Box::new(move |s| {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhe");
                wait_until("the test has its answer", || go.load(Ordering::SeqCst));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
                written.store(true, Ordering::SeqCst);
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }))
        })
    };
    let proxy = start_proxy(test_config(&[backend.addr]));
    let res = get(proxy.local_addr(), "/long");
    assert_eq!((res.status, res.text().as_str()), (200, "he"));
    go.store(true, Ordering::SeqCst);
    wait_until("the backend has sent the extra response", || written.load(Ordering::SeqCst));
    for i in 0..3 {
        let res = get(proxy.local_addr(), &format!("/next/{i}"));
        assert_eq!((res.status, res.text().as_str()), (200, "next"), "request {i} after the extra bytes");
    }
    proxy.shutdown();
}

#[test]
fn a_body_longer_than_its_content_length_is_not_stored() {
    // One write: the head says 2 bytes, 5 follow. pibl relays the 2, and stores nothing.
    let backend = TestBackend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: \"e\"\r\nContent-Length: 2\r\n\r\nheLLO".to_vec(),
        )
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    for round in 0..2 {
        let res = get(proxy.local_addr(), "/overrun");
        assert_eq!(
            (res.status, res.text().as_str(), res.header("x-cache")),
            (200, "he", Some("MISS")),
            "round {round}"
        );
    }
    assert_eq!(backend.requests(), 2, "the second request was answered from the cache");
    assert_eq!(backend.connections(), 2, "the connection with bytes past the body was reused");

    // A conditional miss is read whole to answer from a copy: still its 304, still not stored.
    for round in 0..2 {
        let res = request(proxy.local_addr(), b"GET /cond HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"e\"\r\n\r\n");
        assert_eq!((res.status, res.header("x-cache")), (304, Some("MISS")), "conditional round {round}");
    }
    assert_eq!(backend.requests(), 4, "the conditional answer was not stored");
    assert_eq!(backend.connections(), 4, "nor its connection reused");
    proxy.shutdown();
}

// ------------------------------------------------------------------------------------------------
// Clients that go away
// ------------------------------------------------------------------------------------------------

#[test]
fn a_client_gone_mid_upload_or_mid_download_frees_the_backend_connection() {
    // Upload: half a body, then the client is gone. The backend sees a request that never completes,
    // and its connection is closed rather than kept for the next request.
    let raw = RawBackend::start();
    let proxy = start_proxy(test_config(&[raw.addr]));
    let addr = proxy.local_addr();
    {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n").unwrap();
        client.write_all(&pattern(20_000)).unwrap();
        wait_until("the upload reaches the backend", || raw.received.lock().unwrap().len() > 10_000);
    }
    wait_until("the backend connection is closed", || raw.closed.load(Ordering::SeqCst) == 1);
    let got = raw.received.lock().unwrap().len();
    assert!(got < 1_000_000, "the backend received {got} bytes of a body that never came");
    let res = get(addr, "/after-upload");
    assert_eq!(res.status, 200);
    proxy.shutdown();

    // Download: a large body, the client reads a little and goes. The backend's write fails, so
    // pibl closed its connection instead of holding it.
    let write_failed = Arc::new(AtomicBool::new(false));
    let backend = {
        let write_failed = write_failed.clone();
        TestBackend::start(move |req| {
            if req.target != "/big" {
                return ok("small");
            }
            let write_failed = write_failed.clone();
            Reply::With(Box::new(move |s| {
                let block = pattern(64 * 1024);
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1024 * block.len()).as_bytes());
                for _ in 0..1024 {
                    if s.write_all(&block).is_err() {
                        write_failed.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }))
        })
    };
    let proxy = start_proxy(test_config(&[backend.addr]));
    let addr = proxy.local_addr();
    {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut first = [0u8; 4096];
        client.read_exact(&mut first).unwrap();
    }
    wait_until("the backend's writes fail", || write_failed.load(Ordering::SeqCst));
    let res = get(addr, "/small");
    assert_eq!((res.status, res.text().as_str()), (200, "small"));
    wait_until("no client connection is left open", || proxy.stats().open_connections == 0);
    proxy.shutdown();
}

#[test]
fn ten_thousand_connections_opened_and_dropped_leave_nothing_behind() {
    // A proxy process of its own, so its descriptors are counted apart from the other tests'.
    let backend = TestBackend::named("b");
    let dir = TempDir::new("ten-thousand");
    let proxy = ProxyProcess::start(&dir, backend.addr, "ttl = 0\naccess_log = off\n");
    let (addr, pid) = (proxy.addr, proxy.child.id());
    let _ = get(addr, "/warm");
    let fds_before = open_fds(pid);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..10_000 {
        assert!(Instant::now() < deadline, "10,000 connections took over two minutes (at {i})");
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => panic!("connection {i} refused: {e}"),
        };
        match i % 3 {
            0 => {}
            1 => {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost");
            }
            _ => {
                let _ = stream.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12");
            }
        }
    }
    let opened = deadline - Duration::from_secs(120);
    eprintln!("10,000 connections opened and dropped in {:?}", opened.elapsed());
    // Every client descriptor is closed again (pooled backend connections may only have aged out).
    wait_until("the descriptors are back", || open_fds(pid) <= fds_before);
    let res = get(addr, "/after");
    assert_eq!((res.status, res.text().as_str()), (200, "b"));
}

// ------------------------------------------------------------------------------------------------
// Out of file descriptors
// ------------------------------------------------------------------------------------------------

#[test]
fn out_of_file_descriptors_pibl_answers_503_and_recovers() {
    let backend = TestBackend::named("b");
    let dir = TempDir::new("nofile");
    let mut proxy = ProxyProcess::start(&dir, backend.addr, "ttl = 0\naccess_log = off\nbackend_pool_size = 0\n");
    let alive = |proxy: &mut ProxyProcess| {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("the proxy exited ({status}) at the descriptor limit:\n{}", proxy.stderr(&dir));
        }
    };

    // Clients the proxy has accepted and answered once: their connections are in, descriptors held.
    let mut held: Vec<Client> = (0..4)
        .map(|i| {
            let mut client = Client::connect(proxy.addr);
            assert_eq!(client.get(&format!("/in/{i}")).status, 200);
            client
        })
        .collect();
    let served_before = backend.requests();

    // Out of descriptors: the soft limit below every descriptor number in use (0-2 are the standard
    // streams), so every new socket or file fails with EMFILE, whatever the proxy closes meanwhile.
    // (Lowering the limit of the running process, rather than filling it up with connections, makes
    // the moment exact: a descriptor freed by a closing connection cannot serve the next request.)
    proxy.set_open_file_limit(3);
    let limit_fell = Instant::now();

    // New clients wait in the listen backlog: the loops cannot accept them, say so, and keep going.
    let mut first = Client::connect(proxy.addr);
    first.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut waiting = Client::connect(proxy.addr);
    waiting.send(b"GET /waiting HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the acceptor meets the limit", || proxy.stderr(&dir).contains("accept failed"));

    // Accepted clients ask for something: the backend connection needs a descriptor there is none of.
    // A polite 503 with Retry-After, not a 502 that blames the backend; the backend sees nothing.
    for (i, client) in held.iter_mut().enumerate().take(2) {
        client.send(format!("GET /starved/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let res = client.read_response(false).unwrap_or_else(|e| {
            alive(&mut proxy);
            panic!("request {i} at the limit: no answer ({e})")
        });
        assert_eq!(res.status, 503, "request {i} at the limit: {}", res.text());
        assert_eq!(res.header("retry-after"), Some("1"));
        assert!(res.text().contains("out of resources"), "{}", res.text());
    }
    assert_eq!(backend.requests(), served_before, "no request reached the backend at the limit");
    alive(&mut proxy);
    // The acceptors keep retrying the client in the backlog meanwhile (every 10-20 ms): a while at
    // the limit, for the count of "accept failed" lines below.
    thread::sleep(Duration::from_millis(300));

    // Recovers as soon as descriptors can be had again: the client from the backlog is accepted and
    // answered, and so are the clients that were in all along, the backend still in rotation.
    proxy.set_open_file_limit(1024);
    let at_limit = limit_fell.elapsed();
    let res = first.read_response(false).expect("the first client after the limit is answered");
    assert_eq!(res.status, 200, "the first client after the limit: {}", res.text());
    let res = waiting.read_response(false).expect("the client from the backlog is answered");
    assert_eq!((res.status, res.text().as_str()), (200, "b"), "the client from the backlog");
    for (i, client) in held.iter_mut().enumerate().skip(2) {
        let res = client.get(&format!("/after/{i}"));
        assert_eq!((res.status, res.text().as_str()), (200, "b"), "a held client after the limit");
    }
    let res = get(proxy.addr, "/after");
    assert_eq!((res.status, res.text().as_str()), (200, "b"), "a new client after the limit");
    alive(&mut proxy);
    // The acceptors retried all along (every tick), but the log says so once per acceptor and
    // interval, not once per retry (every 10 ms would flood it).
    let lines = proxy.stderr(&dir).matches("accept failed").count();
    let acceptors = std::thread::available_parallelism().map_or(1, |n| n.get());
    let allowed = acceptors * (at_limit.as_secs() as usize / 5 + 1);
    eprintln!("at the limit for {at_limit:?}: {lines} \"accept failed\" line(s) logged");
    assert!(lines <= allowed, "{lines} \"accept failed\" lines in {at_limit:?} (at most {allowed})");
}

/// The health checker's probes fail too while pibl is out of descriptors: that says nothing of the
/// backend, which must stay in rotation (two failed checks in a row would otherwise empty the pool).
#[test]
fn health_checks_that_find_pibl_out_of_descriptors_keep_the_backend_in_rotation() {
    let backend = TestBackend::named("b");
    let dir = TempDir::new("nofile-health");
    let extra = "ttl = 0\naccess_log = off\nhealth_path = /health\nhealth_interval = 100ms\n";
    let proxy = ProxyProcess::start(&dir, backend.addr, extra);
    let mut client = Client::connect(proxy.addr);
    assert_eq!(client.get("/in").status, 200);

    proxy.set_open_file_limit(3);
    // More rounds than the failures in a row that take a backend out (`FALL`).
    wait_until("three health rounds meet the limit", || {
        let log = proxy.stderr(&dir);
        log.matches("health check skipped").count() >= 3 || log.contains("out of rotation")
    });
    proxy.set_open_file_limit(1024);

    let log = proxy.stderr(&dir);
    assert!(!log.contains("out of rotation"), "a check pibl could not make failed the backend:\n{log}");
    assert!(log.contains("pibl is out of resources"), "{log}");
    let res = client.get("/after");
    assert_eq!((res.status, res.text().as_str()), (200, "b"), "the backend after the limit:\n{log}");
}

// ------------------------------------------------------------------------------------------------
// The API's database on a full disk or a read-only file system
// ------------------------------------------------------------------------------------------------

/// A small tmpfs, unmounted on drop. Mounting needs root; `None` otherwise.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("pibl-disk-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = fs::remove_dir(&dir);
            return None;
        }
        Some(SmallDisk(dir))
    }

    /// Fills the disk with a file until writing fails.
    fn fill(&self) {
        let mut filler = fs::File::create(self.0.join("filler")).expect("create filler");
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while filler.write_all(&byte[..]).is_ok() {
            byte[0] = 1;
        }
    }

    fn free(&self) {
        fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a proxy that panicked mid-test may still hold files there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_makes_api_writes_503_loses_nothing_acknowledged_and_the_data_plane_serves() {
    let Some(disk) = SmallDisk::mount("full", "4m") else {
        eprintln!("SKIPPED a_full_disk_...: mounting a tmpfs needs root; run the tests as root to cover a full disk");
        return;
    };
    let backend = TestBackend::named("b");
    let db = TempDb(disk.0.join("pibl.db"));
    let mut config = api_config(&[backend.addr], &db);
    config.ttl = Duration::ZERO;
    let pibl = start_pibl(config, pibl::clock::Clock::system());
    let (api_addr, proxy_addr) = (pibl.api_addr(), pibl.proxy_addr());
    let creds = |i: usize| format!(r#"{{"email":"user{i}@disk.test","password":"password{i}"}}"#);
    let res = api(api_addr, "POST", "/api/users", None, Some(&creds(0)));
    assert_eq!(res.status, 201, "{}", res.text());

    disk.fill();
    // The first write that needs a new page fails; each answer is a clear 503 or a real success.
    let mut acknowledged = vec![0];
    let mut refused = None;
    for i in 1..=20 {
        let res = api(api_addr, "POST", "/api/users", None, Some(&creds(i)));
        match res.status {
            201 => acknowledged.push(i),
            503 => {
                refused = Some(res);
                break;
            }
            other => panic!("registration {i} on a full disk: {other} {}", res.text()),
        }
    }
    let refused = refused.expect("no write failed on a full disk");
    let error = refused.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("disk") || error.contains("database"), "not a clear message: {}", refused.text());
    // The data plane does not need the disk.
    let res = get(proxy_addr, "/");
    assert_eq!((res.status, res.text().as_str()), (200, "b"));

    disk.free();
    let res = api(api_addr, "POST", "/api/users", None, Some(&creds(99)));
    assert_eq!(res.status, 201, "writes work again once there is room: {}", res.text());
    for i in acknowledged {
        let res = api(api_addr, "POST", "/api/auth", None, Some(&creds(i)));
        assert_eq!(res.status, 200, "user{i}, acknowledged before, logs in: {}", res.text());
    }
    pibl.shutdown();
}

#[test]
fn a_read_only_database_starts_degraded_serves_and_logs_in_and_answers_writes_503() {
    let Some(disk) = SmallDisk::mount("ro", "4m") else {
        eprintln!(
            "SKIPPED a_read_only_database_...: mounting a tmpfs needs root; run the tests as root to cover a \
             read-only database"
        );
        return;
    };
    let backend = TestBackend::named("b");
    let app_backend = TestBackend::named("app");
    let db = TempDb(disk.0.join("pibl.db"));
    let mut config = api_config(&[backend.addr], &db);
    config.ttl = Duration::ZERO;
    let creds = |who: &str| format!(r#"{{"email":"{who}@ro.test","password":"password1"}}"#);

    // Acknowledged writes: a user, an app with an endpoint.
    let pibl = start_pibl(config.clone(), pibl::clock::Clock::system());
    let api_addr = pibl.api_addr();
    assert_eq!(api(api_addr, "POST", "/api/users", None, Some(&creds("kept"))).status, 201);
    let token = login(api_addr, "kept@ro.test", "password1");
    let res = api(api_addr, "POST", "/api/apps/shop", Some(&token), Some(&endpoint_body(app_backend.addr, "/")));
    assert!(res.status == 200 || res.status == 201, "{}", res.text());
    assert!(pibl.shutdown());

    let remount = |mode: &str| {
        let ok = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&disk.0).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount -o remount,{mode} {}", disk.0.display());
    };
    remount("ro");
    assert!(fs::write(disk.0.join("probe"), b"x").is_err(), "the file system is still writable");

    // pibl starts on it, read-only, rather than taking the sites down.
    let pibl = start_pibl(config, pibl::clock::Clock::system());
    let (api_addr, proxy_addr) = (pibl.api_addr(), pibl.proxy_addr());
    assert!(pibl.state().store.is_read_only(), "the store does not know it is read-only");
    // The data plane serves, the app acknowledged before included.
    let res = get(proxy_addr, "/");
    assert_eq!((res.status, res.text().as_str()), (200, "b"));
    let mut client = Client::connect(proxy_addr);
    wait_until("the app stored before routes", || client.get("/shop/x").status == 200);
    // Logins and reads work: nothing acknowledged is lost.
    let token = login(api_addr, "kept@ro.test", "password1");
    let res = api(api_addr, "GET", "/api/apps", Some(&token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.text().contains("shop"), "the app is missing: {}", res.text());
    let res = api(api_addr, "POST", "/api/auth", None, Some(r#"{"email":"kept@ro.test","password":"wrong-one"}"#));
    assert_eq!(res.status, 401, "a wrong password is still refused: {}", res.text());
    // Writes fail with a 503 that names the cause, and change nothing.
    for (method, path, body) in [
        ("POST", "/api/users", Some(creds("new"))),
        ("POST", "/api/apps/more", Some(endpoint_body(app_backend.addr, "/"))),
        ("DELETE", "/api/apps/shop", None),
    ] {
        let res = api(api_addr, method, path, Some(&token), body.as_deref());
        assert_eq!(res.status, 503, "{method} {path}: {}", res.text());
        let error = res.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("read-only"), "{method} {path}: the cause is not named: {error}");
    }
    let res = api(api_addr, "POST", "/api/auth", None, Some(&creds("new")));
    assert_eq!(res.status, 401, "a refused registration left a user behind: {}", res.text());
    assert_eq!(client.get("/shop/x").status, 200, "a refused delete removed the route");
    assert!(pibl.shutdown());

    // Writable again: a restart takes writes, and everything acknowledged is there.
    remount("rw");
    let mut config = api_config(&[backend.addr], &db);
    config.ttl = Duration::ZERO;
    let pibl = start_pibl(config, pibl::clock::Clock::system());
    assert!(!pibl.state().store.is_read_only());
    let api_addr = pibl.api_addr();
    assert_eq!(api(api_addr, "POST", "/api/users", None, Some(&creds("new"))).status, 201);
    let token = login(api_addr, "kept@ro.test", "password1");
    assert!(api(api_addr, "GET", "/api/apps", Some(&token), None).text().contains("shop"));
    assert!(pibl.shutdown());
}
