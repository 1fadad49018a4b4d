//! The dashboard in a real browser: pibl on ephemeral ports with two real backends, a temporary
//! database, traffic, a rate-limited route and a blocked account; `tests/e2e/dashboard.mjs` drives
//! Debian's Chromium through Playwright (`playwright-core`): it logs in, sees both backends healthy,
//! waits while this test fails one backend's health checks, sees it turn unhealthy, saves a
//! screenshot in `target/dashboard-e2e/`, and unblocks the account.
//!
//! Ignored by plain `cargo test`, because it needs Chromium and the npm packages; `.ci/run`
//! installs both and runs it with `cargo test --test dashboard_e2e -- --ignored`. Without them it
//! fails with what to install, never passes silently.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pibl::clock::Clock;
use pibl::Config;

/// Longest the browser script may take in all.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// A backend that answers `name`, and on `/status` 200 while `healthy` holds, 503 otherwise.
fn checked_backend(name: &'static str, healthy: Arc<AtomicBool>) -> TestBackend {
    TestBackend::start(move |req| match req.target.as_str() {
        "/status" if healthy.load(Ordering::SeqCst) => ok("up"),
        "/status" => Reply::Raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec()),
        _ => Reply::Raw(
            format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{name}", name.len())
                .into_bytes(),
        ),
    })
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails with what to install when the browser, node or the npm packages are missing.
fn check_prerequisites(e2e: &Path) {
    let browser = chromium();
    assert!(
        browser.exists(),
        "{} not found: install Debian's Chromium (apt-get install chromium) or set CHROMIUM",
        browser.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node not found: install Node.js (apt-get install nodejs npm)");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in {}",
        e2e.display()
    );
}

#[test]
#[ignore = "needs Chromium, node and `npm ci` in tests/e2e; .ci/run runs it"]
fn dashboard_shows_a_backend_going_down_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e2e = root.join("tests/e2e");
    check_prerequisites(&e2e);
    let out_dir = root.join("target/dashboard-e2e");

    let beta_up = Arc::new(AtomicBool::new(true));
    let alpha = checked_backend("alpha", Arc::new(AtomicBool::new(true)));
    let beta = checked_backend("beta", Arc::clone(&beta_up));
    let db = TempDb::new("dashboard-e2e");
    let ini = format!("[route.search]\nprefix = /search/\nservers = {}\nrate_limit = 2/m\n", alpha.addr);
    let routes = Config::from_ini_str(&ini, "t.ini").expect("routes").routes;
    let config = Config {
        ttl: Duration::from_secs(600),
        health_path: "/status".into(),
        routes,
        ..api_config(&[alpha.addr, beta.addr], &db)
    };
    let pibl = start_pibl(config, Clock::system());
    let (proxy, api_addr) = (pibl.proxy_addr(), pibl.api_addr());

    // Traffic for the charts, the cache and the rejection counters.
    let mut client = Client::connect(proxy);
    for i in 0..40 {
        assert_eq!(client.get(&format!("/catalog/{}", i % 8)).status, 200);
    }
    for _ in 0..4 {
        client.get("/search/q");
    }
    // An account blocked after failed logins, for the Unblock button.
    register_and_login(api_addr, "mallory@pibl.test");
    for _ in 0..5 {
        let wrong = r#"{"email":"mallory@pibl.test","password":"not-the-password"}"#;
        assert_eq!(api(api_addr, "POST", "/api/auth", None, Some(wrong)).status, 401);
    }
    let admin = admin_login(&pibl);
    wait_until("mallory is blocked", || {
        api(api_addr, "GET", "/api/blocked", Some(&admin), None).text().contains("mallory@pibl.test")
    });

    let mut command = Command::new("node");
    command
        .arg(e2e.join("dashboard.mjs"))
        .args([
            &format!("http://{api_addr}/dashboard"),
            ADMIN,
            "password",
            &alpha.addr.to_string(),
            &beta.addr.to_string(),
            "mallory@pibl.test",
        ])
        .arg(&out_dir)
        .env("CHROMIUM", chromium());
    let (mut script, rx) = spawn_script(&mut command, "node");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let wait_for = |expected: &str| loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == expected => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    };
    let healthy_seen = wait_for("HEALTHY");
    if healthy_seen {
        beta_up.store(false, Ordering::SeqCst);
        // Traffic keeps flowing to the healthy backend while the other one fails its checks.
        for i in 0..10 {
            client.get(&format!("/catalog/{i}"));
        }
        let mut stdin = script.stdin.take().expect("script stdin");
        writeln!(stdin, "down").expect("signal the script");
    }
    let finished = healthy_seen && wait_for("OK");
    let status = loop {
        match script.try_wait().expect("wait for the script") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => break None,
            None => thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        let _ = script.kill();
        let _ = script.wait();
    }
    assert!(healthy_seen, "the page never showed both backends healthy (see the script's errors above)");
    assert!(finished, "the page never showed the failed backend as unhealthy (see the script's errors above)");
    assert!(status.is_some_and(|s| s.success()), "the browser script failed: {status:?}");
    let png = out_dir.join("dashboard.png");
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", png.display());
    println!("screenshot: {}", png.display());
    assert!(
        !api(api_addr, "GET", "/api/blocked", Some(&admin), None).text().contains("mallory@pibl.test"),
        "the Unblock button did not unblock"
    );
    assert!(pibl.shutdown());
}
