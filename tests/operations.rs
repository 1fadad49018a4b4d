//! Running pibl in production: `proxy --check-config`, the access log formats written to a file, and
//! reopening that file on SIGUSR1 after logrotate moved it, all with the real binaries.

#[macro_use]
mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::{ok, start_proxy, test_config, wait_until, Client, ProxyProcess, Reply, TempDir, TestBackend, WAIT};
use pibl::config::{AccessLogFormat, AccessLogTarget, Config};

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxy")).args(args).output().expect("run the proxy binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Replaces the `[...]` time of a combined line, the one part a test cannot know.
fn without_time(line: &str) -> String {
    match (line.find('['), line.find(']')) {
        (Some(open), Some(close)) if open < close => format!("{}[T]{}", &line[..open], &line[close + 1..]),
        _ => line.to_string(),
    }
}

#[test]
fn check_config_accepts_a_valid_file_and_creates_nothing() {
    let dir = TempDir::new("check-ok");
    let log = dir.0.join("access.log");
    let path = dir.file(
        "parser.ini",
        &format!(
            "[DEFAULT]\nbind = 127.0.0.1\nport = 8081\nthreads = 4\nip_server1 = 127.0.0.1:9001\n\
             ip_server2 = 127.0.0.1:9002\naccess_log_format = json\naccess_log_file = {}\n",
            log.display()
        ),
    );
    let path_arg = path.to_str().expect("temp path is UTF-8");
    let out = proxy(&["--check-config", "--config", path_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "configuration file {path_arg} is valid\n\
             listen 127.0.0.1:8081, 2 backends, 4 event loops, access log json to {}\n",
            log.display()
        )
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert!(!log.exists(), "checking does not create the access log");

    // `-t` as in nginx; defaults for everything the file leaves out.
    let minimal = dir.file("minimal.ini", "[DEFAULT]\nip_server1 = 127.0.0.1:9001\n");
    let out = proxy(&["-t", "-c", minimal.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The event loops, one per core unless `threads` says.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let loops = if cores == 1 { "1 event loop".to_string() } else { format!("{cores} event loops") };
    assert!(
        text(&out.stdout)
            .ends_with(&format!("\nlisten 0.0.0.0:8080, 1 backend, {loops}, access log seed to the log (stderr)\n")),
        "{}",
        text(&out.stdout)
    );
    let threaded = dir.file("threaded.ini", "[DEFAULT]\nengine = threads\nip_server1 = 127.0.0.1:9001\n");
    let out = proxy(&["-t", "-c", threaded.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A file written for the threaded engine, since removed, runs the loops and is told the line can go.
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains(&format!(", 1 backend, {loops}, ")), "{said}");
    assert!(said.contains("threaded.ini:2: warning: engine = threads: the threaded engine was removed"), "{said}");
}

#[test]
fn check_config_reports_duplicates_empty_files_and_missing_headers() {
    let dir = TempDir::new("check-slips");
    let twice = dir.file("twice.ini", "[DEFAULT]\nip_server1 = 127.0.0.1:9001\nip_server2 = 127.0.0.1:9001\n");
    let twice_arg = twice.to_str().expect("UTF-8");
    let out = proxy(&["--check-config", "--config", twice_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!("{twice_arg}:3: ip_server2: 127.0.0.1:9001 is already ip_server1 (line 2); list each backend once\n")
    );

    // Loads (pibl runs on the defaults) but says so, with what `parser` would write.
    let empty = dir.file("empty.ini", "");
    let empty_arg = empty.to_str().expect("UTF-8");
    let out = proxy(&["--check-config", "--config", empty_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{empty_arg}: warning: the file has no settings, so pibl runs on the built-in defaults; \
             `parser --out {empty_arg} --force` writes those defaults, each one documented\n"
        )
    );

    let bare = dir.file("bare.ini", "# mine\nport = 8081\n");
    let bare_arg = bare.to_str().expect("UTF-8");
    let out = proxy(&["--check-config", "--config", bare_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with(&format!("{bare_arg}:2: warning: no section header")),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("listen 0.0.0.0:8081"), "{}", text(&out.stdout));
}

#[test]
fn check_config_rejects_bad_files_with_status_2() {
    let dir = TempDir::new("check-bad");
    let bad = dir.file("bad.ini", "[DEFAULT]\nport = 8080\nthreads = many\n");
    let bad_arg = bad.to_str().expect("UTF-8");
    let out = proxy(&["--check-config", "--config", bad_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), format!("{bad_arg}:3: threads: \"many\" is not a whole number (1-1024), or auto\n"));
    assert!(out.stdout.is_empty());

    let nowhere = dir.0.join("no-such-dir");
    let log_dir = dir.file("logdir.ini", &format!("access_log_file = {}/access.log\n", nowhere.display()));
    let log_dir_arg = log_dir.to_str().expect("UTF-8");
    let out = proxy(&["--check-config", "--config", log_dir_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{log_dir_arg}: access_log_file: directory {} does not exist; create it or choose another file\n",
            nowhere.display()
        )
    );

    // A certificate file that is not there is what only start-up would find: checked too.
    let no_cert = dir.0.join("site.crt");
    let tls = dir.file(
        "tls.ini",
        &format!(
            "[DEFAULT]\ntls_port = 8443\ntls_cert = {}\ntls_key = {}/site.key\n",
            no_cert.display(),
            dir.0.display()
        ),
    );
    let out = proxy(&["--check-config", "--config", tls.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), format!("{}: does not exist\n", no_cert.display()));

    let missing = dir.0.join("missing.ini");
    let out = proxy(&["--check-config", "--config", missing.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with(&format!("{}: cannot read: ", missing.display())), "{}", text(&out.stderr));
    // The hint names the README's own commands (release builds), so following it starts no second build.
    let hint = text(&out.stderr).lines().last().unwrap_or_default().to_string();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    assert!(hint.starts_with("hint: "), "{hint}");
    for command in hint.split('`').skip(1).step_by(2) {
        assert!(command.starts_with("cargo run --release --bin "), "{command}");
        assert!(readme.contains(command), "the hint's `{command}` is not in the README");
    }

    let out = proxy(&["--check-config", "--demo"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn parser_sets_database_and_access_log_file() {
    let dir = TempDir::new("parser");
    let out = dir.0.join("parser.ini");
    let written = Command::new(env!("CARGO_BIN_EXE_parser"))
        .args(["--out", out.to_str().expect("UTF-8"), "--backend", "127.0.0.1:7001"])
        .args(["--database", "/var/lib/pibl/pibl.db", "--access-log-file", "/var/log/pibl/access.log"])
        .output()
        .expect("run the parser binary");
    assert!(written.status.success(), "{}", text(&written.stderr));
    let c = Config::load(&out).expect("written file loads");
    assert_eq!(c.database, PathBuf::from("/var/lib/pibl/pibl.db"));
    assert_eq!(c.access_log_file, AccessLogTarget::File(PathBuf::from("/var/log/pibl/access.log")));
    assert_eq!(
        c,
        Config {
            backends: c.backends.clone(),
            database: c.database.clone(),
            access_log_file: c.access_log_file.clone(),
            ..Config::default()
        }
    );
}

#[test]
fn combined_and_json_lines_record_bytes_referer_and_user_agent() {
    let dir = TempDir::new("formats");
    let backend = TestBackend::start(|req| {
        if req.method == "HEAD" {
            Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec())
        } else {
            ok("hello")
        }
    });
    let combined = dir.0.join("combined.log");
    let server = start_proxy(Config {
        access_log: true,
        access_log_format: AccessLogFormat::Combined,
        access_log_file: AccessLogTarget::File(combined.clone()),
        ..test_config(&[backend.addr])
    });
    let mut client = Client::connect(server.local_addr());
    client.send(b"GET /a?x=1 HTTP/1.1\r\nHost: t\r\nReferer: http://ref.example/\r\nUser-Agent: pibl-test/1.0\r\n\r\n");
    assert_eq!(client.read_response(false).expect("GET answer").text(), "hello");
    client.send(b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response(true).expect("HEAD answer").status, 200);
    drop(client);
    server.shutdown(); // closes the log: every line is in the file now
    let got: Vec<String> = lines(&combined).iter().map(|l| without_time(l)).collect();
    assert_eq!(
        got,
        [
            "127.0.0.1 - - [T] \"GET /a?x=1 HTTP/1.1\" 200 5 \"http://ref.example/\" \"pibl-test/1.0\"",
            "127.0.0.1 - - [T] \"HEAD /a HTTP/1.1\" 200 0 \"-\" \"-\"",
        ]
    );

    // No backend up: pibl's own 502 page is what the bytes count.
    let dead = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let json = dir.0.join("json.log");
    let server = start_proxy(Config {
        access_log: true,
        access_log_format: AccessLogFormat::Json,
        access_log_file: AccessLogTarget::File(json.clone()),
        ..test_config(&[dead])
    });
    let res = common::request(
        server.local_addr(),
        b"GET /down HTTP/1.1\r\nHost: t\r\nUser-Agent: \"quoted\" \xc3\xa9\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(res.status, 502);
    server.shutdown();
    let got = lines(&json);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = &got[0];
    assert!(line.starts_with("{\"time\":\"20") && line.contains("Z\",\"client\":\"127.0.0.1\","), "{line}");
    let tail =
        format!(",\"method\":\"GET\",\"path\":\"/down\",\"status\":502,\"bytes\":{},\"duration_ms\":", res.body.len());
    assert!(line.contains(&tail), "{line}");
    assert!(line.ends_with(",\"backend\":null,\"user_agent\":\"\\\"quoted\\\" é\",\"referer\":null}"), "{line}");
}

#[test]
fn access_log_file_is_reopened_on_sigusr1() {
    let dir = TempDir::new("rotate");
    let backend = TestBackend::named("b1");
    let log = dir.0.join("access.log");
    let rotated = dir.0.join("access.log.1");
    let mut proxy = ProxyProcess::start(
        &dir,
        backend.addr,
        &format!("access_log_format = json\naccess_log_file = {}\n", log.display()),
    );
    let get = |path: &str| {
        let res = common::request(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: rotate-test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!((res.status, res.text().as_str()), (200, "b1"));
    };

    for n in 1..=3 {
        get(&format!("/before?n={n}"));
    }
    wait_until("three lines are in the log", || lines(&log).len() == 3);

    // What logrotate does: move the file, then `kill -USR1`; the proxy creates a new one.
    fs::rename(&log, &rotated).expect("rotate the log");
    proxy.signal("USR1");
    wait_until("the proxy reopened the log", || log.exists());
    for n in 1..=2 {
        get(&format!("/after?n={n}"));
    }
    wait_until("two lines are in the new log", || lines(&log).len() == 2);

    // A worker queues its line just after the answer goes out, so two requests in a row may be logged
    // in either order: compare them by path.
    let by_path = |mut lines: Vec<String>| {
        lines.sort_by_key(|l| l.split("\"path\":").nth(1).unwrap_or("").to_string());
        lines
    };
    let old = by_path(lines(&rotated));
    assert_eq!(old.len(), 3, "{old:?}");
    for (n, line) in old.iter().enumerate() {
        assert!(line.contains(&format!("\"path\":\"/before?n={}\",\"status\":200,\"bytes\":2,", n + 1)), "{line}");
        assert!(line.contains("\"user_agent\":\"rotate-test\""), "{line}");
    }
    let new = by_path(lines(&log));
    for (n, line) in new.iter().enumerate() {
        assert!(line.contains(&format!("\"path\":\"/after?n={}\"", n + 1)), "{line}");
    }

    // SIGTERM: a clean stop, exit status 0, nothing more written.
    proxy.signal("TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = proxy.child.try_wait().expect("poll the proxy") {
            break status;
        }
        assert!(Instant::now() < deadline, "the proxy did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}: {}", fs::read_to_string(dir.0.join("proxy.stderr")).unwrap_or_default());
    assert_eq!(lines(&log).len(), 2);
    assert_eq!(backend.requests(), 5);
}

#[test]
fn sigusr1_without_a_log_file_does_not_kill_the_proxy() {
    let dir = TempDir::new("usr1");
    let backend = TestBackend::named("b1");
    let mut proxy = ProxyProcess::start(&dir, backend.addr, "access_log = off\n");
    proxy.signal("USR1");
    // Proof that the signal was handled: the proxy still answers after it, and is still running.
    let res = common::get(proxy.addr, "/");
    assert_eq!(res.status, 200);
    assert!(proxy.child.try_wait().expect("poll the proxy").is_none());
}
