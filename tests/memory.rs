//! Memory under a login burst: password hashing (Argon2id, 19 MiB of working memory per hash) runs
//! on a few threads that reuse their memory, so a burst of registrations and logins leaves the
//! proxy's resident memory within 64 MiB of where it started. Measured on a real `proxy` process.

mod common;

use std::fs;
use std::thread;

use common::*;

/// The resident set (`VmRSS`) and its peak (`VmHWM`) of process `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let dir = proc_dir(pid).unwrap_or_else(|| panic!("process {pid} is not running"));
    let status = fs::read_to_string(dir.join("status")).expect("read /proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_login_burst_keeps_rss_within_64_mib_of_the_baseline() {
    const CLIENTS: usize = 8;
    const EACH: usize = 5; // 8 x 5 = 40 registrations, then 40 logins
    let backend = TestBackend::named("b");
    let dir = TempDir::new("login-burst");
    let proxy = ProxyProcess::start(&dir, backend.addr, "auth_rate = 0\naccess_log = off\n");
    let pid = proxy.child.id();
    let res = get(proxy.addr, "/");
    assert_eq!(res.status, 200);
    let (baseline, _) = rss_kib(pid);

    let api_addr = proxy.api_addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let creds = |i: usize| format!(r#"{{"email":"u{c}-{i}@burst.test","password":"password-{c}-{i}"}}"#);
                for i in 0..EACH {
                    let res = api(api_addr, "POST", "/api/users", None, Some(&creds(i)));
                    assert_eq!(res.status, 201, "register {c}-{i}: {}", res.text());
                }
                for i in 0..EACH {
                    let res = api(api_addr, "POST", "/api/auth", None, Some(&creds(i)));
                    assert_eq!(res.status, 200, "login {c}-{i}: {}", res.text());
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    let (after, peak) = rss_kib(pid);
    eprintln!(
        "login burst ({} registrations + {} logins, {CLIENTS} clients): RSS {} MiB before, {} MiB after, peak {} MiB",
        CLIENTS * EACH,
        CLIENTS * EACH,
        baseline / 1024,
        after / 1024,
        peak / 1024
    );
    assert!(
        after <= baseline + 64 * 1024,
        "RSS grew from {} KiB to {} KiB (peak {} KiB) over a login burst",
        baseline,
        after,
        peak
    );
}
