//! `proxy --demo` as a newcomer meets it, run as a subprocess: a backend port another program
//! holds falls back to a free one with a warning naming both; the admin it prints can lift a
//! lock-out; `--demo --config FILE` keeps `./pibl-demo.db` unless the file names a database, and
//! says which one it uses.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use common::*;

fn free_ports() -> [u16; 5] {
    let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    [free(), free(), free(), free(), free()]
}

/// Launches until the proxy and API ports (free a moment ago) were not taken meanwhile.
fn launch(dir: &TempDir, args: &[&str], ports: impl Fn() -> [u16; 5]) -> DemoProcess {
    let mut last = String::new();
    for _ in 0..5 {
        match DemoProcess::launch(dir, args, ports()) {
            Ok(demo) => return demo,
            Err(log) => last = log,
        }
    }
    panic!("the demo did not start:\n{last}");
}

#[test]
fn a_taken_backend_port_falls_back_loudly() {
    let dir = TempDir::new("demo-taken");
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let held = holder.local_addr().expect("addr").port();
    let demo = launch(&dir, &[], || {
        let mut ports = free_ports();
        ports[2] = held;
        ports
    });
    let log = demo.log(&dir);
    let warning = log.lines().find(|l| l.contains("is taken by another program")).unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("[WARN]"), "{warning}");
    assert!(
        warning.contains(&format!("demo: port {held} is taken by another program, so demo-1 listens on 127.0.0.1:"))
    );
    assert!(warning.contains(&format!("wherever the README says {held}")), "{warning}");
    // And it serves: the page names demo-1 on its new port.
    let page = get(demo.proxy_addr(), "/").text();
    assert!(page.contains("Served by demo-1"), "{page}");
    assert!(!page.contains(&format!("port {held} ")), "{page}");
    drop(holder);
}

#[test]
fn the_printed_admin_lifts_a_lock_out() {
    let dir = TempDir::new("demo-admin");
    let demo = DemoProcess::start(&dir);
    let api_addr = SocketAddr::from(([127, 0, 0, 1], demo.ports[1]));
    let log = demo.log(&dir);
    let line = log.lines().find(|l| l.contains("demo: admin admin@demo.local with password ")).expect("admin line");
    let password = line.split("with password ").nth(1).and_then(|r| r.split(' ').next()).expect("a password");
    let admin = login(api_addr, "admin@demo.local", password);

    register_and_login(api_addr, "locked@pibl.test");
    for _ in 0..5 {
        let wrong = r#"{"email":"locked@pibl.test","password":"not-this-one"}"#;
        assert_eq!(api(api_addr, "POST", "/api/auth", None, Some(wrong)).status, 401);
    }
    wait_until("the account is blocked", || {
        api(api_addr, "GET", "/api/blocked", Some(&admin), None).text().contains("locked@pibl.test")
    });
    let lifted = api(api_addr, "DELETE", "/api/blocked/locked@pibl.test", Some(&admin), None);
    assert_eq!(lifted.status, 200, "{}", lifted.text());
    login(api_addr, "locked@pibl.test", "password");
}

#[test]
fn demo_with_a_config_keeps_the_demo_database_unless_the_file_names_one() {
    let dir = TempDir::new("demo-config");
    let plain = dir.file("plain.ini", "[DEFAULT]\nthreads = 4\n");
    let demo = launch(&dir, &["--config", plain.to_str().expect("UTF-8")], free_ports);
    let log = demo.log(&dir);
    assert!(log.contains(&format!("demo: database ./pibl-demo.db ({} names none)", plain.display())), "{log}");
    assert!(dir.0.join("pibl-demo.db").exists());
    assert!(dir.0.join("pibl-demo-admin.json").exists());
    // SIGHUP re-reads the file (its own backends would be 127.0.0.1:9001-9003, not these demo
    // backends): the demo's backends and the icon's route stay.
    let hup = std::process::Command::new("kill").args(["-HUP", &demo.child.id().to_string()]).status();
    assert!(hup.is_ok_and(|s| s.success()));
    wait_until("the reload is logged", || demo.log(&dir).contains("reload: 1 route(s), 3 default backend(s)"));
    for expected in ["demo-1", "demo-2", "demo-3"] {
        let page = get(demo.proxy_addr(), "/").text();
        assert!(page.contains(&format!("Served by {expected}")), "{page}");
    }
    drop(demo);

    let named = dir.file("named.ini", "[DEFAULT]\ndatabase = mine.db\n");
    let demo = launch(&dir, &["--config", named.to_str().expect("UTF-8")], free_ports);
    let log = demo.log(&dir);
    assert!(log.contains(&format!("demo: database mine.db (from {})", named.display())), "{log}");
    assert!(Path::new(&dir.0.join("mine.db")).exists());
    assert!(dir.0.join("mine-admin.json").exists(), "the admin's login sits beside its database");
}
