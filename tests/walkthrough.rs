//! The README's walk-through, run as written: the block after the `<!-- walkthrough -->` marker in
//! README.md is read here (so the two cannot drift), and each command runs in `bash` with the real
//! `curl` against `proxy --demo` started as a subprocess. Each command's output must be what the
//! README shows under it (`# ` lines; `...` stands for any text within a line).
//!
//! The demo runs on free ports chosen here (`PIBL_DEMO_PORTS`), since other tests run at the same
//! time; the README's default ports (8080, 5000, 9001-9003) are replaced by those in the commands
//! and in the expected answers, and nothing else is changed.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{DemoProcess, TempDir};

/// How long a read-only command may be repeated until its answer shows up: the app log and the
/// lock-out are written by background threads, a moment after the request that caused them.
const SETTLE: Duration = Duration::from_secs(20);

/// One command of the walk-through and the lines the README shows under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The walk-through block: prose comments (after a blank line) are skipped; every other line is a
/// command, and the `#` lines right under it are its expected output.
fn walkthrough_steps(readme: &str) -> Vec<Step> {
    let marker = readme.find("<!-- walkthrough").expect("README.md has the <!-- walkthrough --> marker");
    let rest = &readme[marker..];
    let open = rest.find("```sh\n").expect("a ```sh block follows the marker") + "```sh\n".len();
    let close = rest[open..].find("\n```").expect("the walk-through block ends");
    let mut steps: Vec<Step> = Vec::new();
    let mut in_output = false;
    for line in rest[open..open + close].lines() {
        if line.trim().is_empty() {
            in_output = false;
        } else if let Some(comment) = line.strip_prefix('#') {
            if in_output {
                let text = comment.strip_prefix(' ').unwrap_or(comment);
                steps.last_mut().expect("output follows a command").expected.push(text.to_string());
            }
        } else {
            steps.push(Step { command: line.to_string(), expected: Vec::new() });
            in_output = true;
        }
    }
    steps
}

/// The README's default ports, each replaced by the port the test's demo uses.
fn with_ports(text: &str, ports: &[u16; 5]) -> String {
    let mut out = text.to_string();
    for (default, port) in ["8080", "5000", "9001", "9002", "9003"].iter().zip(ports) {
        out = out.replace(default, &port.to_string());
    }
    out
}

/// Whether `actual` is what the README shows: line by line, trailing spaces (and the `\r` of
/// header lines) ignored, `...` matching any text within a line.
fn matches(expected: &[String], actual: &str) -> bool {
    let actual: Vec<&str> = actual.lines().map(str::trim_end).collect();
    let actual = match actual.iter().rposition(|l| !l.is_empty()) {
        Some(last) => &actual[..=last],
        None => &[][..],
    };
    actual.len() == expected.len() && expected.iter().zip(actual).all(|(e, a)| line_matches(e.trim_end(), a))
}

fn line_matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// `NAME=$(command)`: the shell variable and its command.
fn assignment(command: &str) -> Option<(&str, &str)> {
    let (name, value) = command.split_once('=')?;
    let inner = value.strip_prefix("$(")?.strip_suffix(')')?;
    name.chars().all(|c| c.is_ascii_uppercase() || c == '_').then_some((name, inner))
}

/// A command that changes nothing (no method given, no body) may be repeated until it shows what
/// the background threads write a moment later.
fn read_only(command: &str) -> bool {
    !command.contains(" -X ") && !command.contains(" -d ")
}

/// Runs `command` in bash in `dir` with the variables set so far; its standard output.
fn run(command: &str, dir: &Path, vars: &[(String, String)]) -> String {
    let out = Command::new("bash")
        .args(["-c", command])
        .current_dir(dir)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_walkthrough_runs_as_written_against_the_demo() {
    let curl = Command::new("curl").arg("--version").output();
    assert!(curl.is_ok_and(|o| o.status.success()), "curl not found: install it (apt-get install curl)");
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let steps = walkthrough_steps(&readme);
    assert!(steps.len() >= 12, "the walk-through lost its steps: {steps:#?}");
    for needed in ["/api/users", "/api/auth", "/api/apps/helloworld", "/helloworld/", "/logs", "/api/blocked/"] {
        assert!(steps.iter().any(|s| s.command.contains(needed)), "no step uses {needed}");
    }

    let dir = TempDir::new("walkthrough");
    let demo = DemoProcess::start(&dir);
    let ports = demo.ports;
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut failure = None;
    for step in &steps {
        let command = with_ports(&step.command, &ports);
        let expected: Vec<String> = step.expected.iter().map(|l| with_ports(l, &ports)).collect();
        if let Some((name, inner)) = assignment(&command) {
            assert!(expected.is_empty(), "an assignment shows no output: {command}");
            let value = run(inner, &dir.0, &vars).trim().to_string();
            if value.is_empty() {
                failure = Some(format!("{command}\nset {name} to nothing"));
                break;
            }
            vars.push((name.to_string(), value));
            continue;
        }
        let deadline = Instant::now() + SETTLE;
        let mut actual = run(&command, &dir.0, &vars);
        while !matches(&expected, &actual) && read_only(&command) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            actual = run(&command, &dir.0, &vars);
        }
        if !matches(&expected, &actual) {
            failure = Some(format!("{command}\nREADME shows:\n{}\ngot:\n{actual}", expected.join("\n")));
            break;
        }
    }
    drop(demo);
    if let Some(failure) = failure {
        panic!("{failure}\n\ndemo log:\n{}", fs::read_to_string(dir.0.join("demo.log")).unwrap_or_default());
    }
}

#[test]
fn the_walkthrough_reader_understands_its_own_format() {
    let readme =
        "x\n<!-- walkthrough -->\n```sh\n# prose\ncurl a\n# out 1\n#\n\n# more prose\nB=$(curl b)\ncurl c\n```\n";
    let steps = walkthrough_steps(readme);
    let shape: Vec<(&str, Vec<&str>)> =
        steps.iter().map(|s| (s.command.as_str(), s.expected.iter().map(String::as_str).collect())).collect();
    assert_eq!(shape, [("curl a", vec!["out 1", ""]), ("B=$(curl b)", vec![]), ("curl c", vec![])]);
    assert_eq!(assignment("TOKEN=$(curl x | grep -o 'e')"), Some(("TOKEN", "curl x | grep -o 'e'")));
    assert!(line_matches("try again in ... s or ask", "try again in 899 s or ask"));
    assert!(!line_matches("try again in ... s", "try again in 899 s or ask"));
    assert!(matches(&["a".into(), "b".into()], "a  \r\nb\n\n"));
    assert!(!matches(&["a".into()], "a\nb\n"));
    assert_eq!(with_ports("localhost:8080 9001", &[1, 2, 3, 4, 5]), "localhost:1 3");
}
