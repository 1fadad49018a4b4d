//! The README's first promise, in a real browser: `proxy --demo` started as a subprocess, and
//! Debian's Chromium (through Playwright's `playwright-core`, `tests/e2e/demo.mjs`) loads the page
//! and reloads it twice, reading `demo-1`, `demo-2`, `demo-3` in turn, although the browser also
//! asks for `/favicon.ico` after the first page (the demo's log shows it; the reload waits for it).
//! The icon is a real one, kept a day by browsers and cached by pibl, on a route of its own so it
//! never takes a backend's turn.
//!
//! Ignored by plain `cargo test`, because it needs Chromium and the npm packages; `.ci/run`
//! installs both and runs it with `cargo test --test demo_e2e -- --ignored`. Without them it fails
//! with what to install, never passes silently.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Longest the browser script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

#[test]
#[ignore = "needs Chromium, node and `npm ci` in tests/e2e; .ci/run runs it"]
fn reloading_the_demo_in_chromium_shows_each_backend_in_turn() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let browser = chromium();
    assert!(browser.exists(), "{} not found: install Debian's Chromium (apt-get install chromium)", browser.display());
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in {}",
        e2e.display()
    );

    let dir = TempDir::new("demo-e2e");
    let demo = DemoProcess::start(&dir);
    let proxy = demo.proxy_addr();
    let mut command = Command::new("node");
    command.arg(e2e.join("demo.mjs")).arg(format!("http://localhost:{}/", proxy.port())).env("CHROMIUM", &browser);
    let (mut script, rx) = spawn_script(&mut command, "node");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let next_page = || {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).ok().and_then(|line| line.strip_prefix("PAGE ").map(str::to_string))
    };
    let mut pages = vec![next_page()];
    // The browser asks for the icon after the first page; the reload waits until it has, so the
    // icon's request (had it taken a round-robin turn) falls between the pages.
    let log = dir.0.join("demo.log");
    let icon_asked = loop {
        if fs::read_to_string(&log).unwrap_or_default().contains("GET /favicon.ico 200") {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    if let Some(mut stdin) = script.stdin.take() {
        let _ = writeln!(stdin, "icon seen");
    }
    pages.push(next_page());
    pages.push(next_page());
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
    assert!(icon_asked, "Chromium never asked for /favicon.ico:\n{}", fs::read_to_string(&log).unwrap_or_default());
    assert!(status.is_some_and(|s| s.success()), "the browser script failed: {status:?} (see its errors above)");
    let pages: Vec<&str> = pages.iter().map(|p| p.as_deref().unwrap_or("(none)")).collect();
    assert_eq!(pages, ["demo-1", "demo-2", "demo-3"], "each reload shows the next backend");

    // pibl keeps the icon too: the browser's request stored it, so this one is a hit.
    let host = format!("localhost:{}", proxy.port());
    let icon =
        request(proxy, format!("GET /favicon.ico HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(icon.status, 200);
    assert_eq!(icon.header("content-type"), Some("image/x-icon"));
    assert_eq!(icon.header("cache-control"), Some("public, max-age=86400"), "browsers keep it a day");
    assert_eq!(icon.header("x-cache"), Some("HIT"), "pibl answers the icon from its cache");
    assert!(icon.body.starts_with(&[0, 0, 1, 0, 1, 0]), "an ICO file with one image");
}
