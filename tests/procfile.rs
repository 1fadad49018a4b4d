//! `deploy/procfile.sh`, the Procfile runner that needs nothing installed: it starts every line,
//! prefixes their output with their names, and stops them all on Ctrl-C (SIGINT) or when one ends.
//! Run for real with small Procfiles of `sh` and `sleep` commands.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TempDir, WAIT};

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/procfile.sh").to_string()
}

fn start(dir: &TempDir, procfile: &str) -> Child {
    let path = dir.file("Procfile", procfile);
    let out = fs::File::create(dir.0.join("out.txt")).expect("output file");
    Command::new("bash")
        .arg(script())
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("run deploy/procfile.sh")
}

fn output(dir: &TempDir) -> String {
    fs::read_to_string(dir.0.join("out.txt")).unwrap_or_default()
}

fn wait_for_output(dir: &TempDir, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !output(dir).contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in:\n{}", output(dir));
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the script") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the script did not stop");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The pids the script reports as started.
fn started(out: &str) -> Vec<u32> {
    out.lines().filter_map(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok()).collect()
}

/// Gone, or a zombie left for the container's init to reap: not running either way.
fn running(pid: u32) -> bool {
    common::proc_dir(pid)
        .and_then(|dir| fs::read_to_string(dir.join("stat")).ok())
        .is_some_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

fn wait_stopped(pids: &[u32]) {
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|&p| running(p)) {
        assert!(Instant::now() < deadline, "still running: {pids:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ctrl_c_stops_every_line() {
    let dir = TempDir::new("procfile-int");
    let mut child =
        start(&dir, "# a comment\nhello: sh -c 'echo hello from one; exec sleep 300'\n\nnap:   sleep 301\n");
    wait_for_output(&dir, "hello  hello from one");
    let pids = started(&output(&dir));
    assert_eq!(pids.len(), 2, "{}", output(&dir));
    assert!(pids.iter().all(|&p| running(p)));
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    assert_eq!(wait_exit(&mut child), Some(130));
    wait_stopped(&pids);
    assert!(output(&dir).contains("procfile.sh: started nap (pid"), "{}", output(&dir));
}

#[test]
fn one_line_ending_stops_the_others() {
    let dir = TempDir::new("procfile-end");
    let mut child = start(&dir, "nap: sleep 302\nquits: sh -c 'sleep 0.2; exit 3'\n");
    assert_eq!(wait_exit(&mut child), Some(3));
    wait_stopped(&started(&output(&dir)));
    assert!(output(&dir).contains("a process ended (status 3); stopping the others"), "{}", output(&dir));
}

#[test]
fn a_line_without_a_name_is_refused() {
    let dir = TempDir::new("procfile-bad");
    let mut child = start(&dir, "sleep 303\n");
    assert_eq!(wait_exit(&mut child), Some(2));
    assert!(output(&dir).contains("not a 'name: command' line: sleep 303"), "{}", output(&dir));
    assert!(Path::new(&script()).exists());
}
