//! The configuration file end to end: `parser.ini.example`, error messages from real files, and the
//! `parser` binary writing, refusing to overwrite and rejecting bad flags.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::TempDir;
use pibl::config::{Config, ConfigError};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/parser.ini.example");

/// Loads `text` from a real file and returns the error message, with the file shown as `label`.
fn load_error(text: &str) -> String {
    let dir = TempDir::new("err");
    let path = dir.file("parser.ini", text);
    let message = match Config::load(&path) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(e) => e.to_string(),
    };
    message.replacen(&path.display().to_string(), "parser.ini", 1)
}

fn parser(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parser")).args(args).output().expect("run the parser binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn example_file_is_the_default_config() {
    let loaded = Config::load(Path::new(EXAMPLE)).expect("parser.ini.example loads");
    assert_eq!(loaded, Config::default());
    let text = fs::read_to_string(EXAMPLE).expect("read parser.ini.example");
    assert_eq!(
        text,
        Config::default().to_ini(),
        "parser.ini.example is stale: regenerate it with `cargo run --release --bin parser -- --out parser.ini.example --force`"
    );
}

#[test]
fn seed_style_file_loads() {
    let dir = TempDir::new("seed");
    let path = dir.file(
        "parser.ini",
        "[DEFAULT]\nport = 8080\nmax_conn = 100\nbuffer_size = 8192\nttl = 60\nip_server1 = 127.0.0.1:8081\nip_server2 = 127.0.0.1\n",
    );
    let c = Config::load(&path).expect("seed file loads");
    assert_eq!(c.port, 8080);
    assert_eq!(c.max_conn, 100);
    assert_eq!(c.buffer_size, 8192);
    assert_eq!(c.ttl, Duration::from_secs(60));
    let backends: Vec<(&str, SocketAddr)> = c.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    assert_eq!(
        backends,
        [
            ("127.0.0.1:8081", SocketAddr::from(([127, 0, 0, 1], 8081))),
            ("127.0.0.1:80", SocketAddr::from(([127, 0, 0, 1], 80))),
        ]
    );
    // Everything the seed does not mention keeps its default.
    let expected = Config { max_conn: 100, backends: c.backends.clone(), ..Config::default() };
    assert_eq!(c, expected);
}

#[test]
fn error_messages_point_at_file_line_and_key() {
    assert_eq!(load_error("[DEFAULT]\nport = 8080\nttl = 60\nport_x = 1\n"), "parser.ini:4: port_x: unknown key");
    assert_eq!(
        load_error("# pibl\n[DEFAULT]\nmax_conn = 5\nport = 80x\n"),
        "parser.ini:4: port: \"80x\" is not a port number (1-65535)"
    );
    assert_eq!(load_error("[DEFAULT]\nprot = 8080\n"), "parser.ini:2: prot: unknown key (did you mean \"port\"?)");
    assert_eq!(
        load_error("[DEFAULT]\nttl = 60\nbackend_timeout = 5 minutes\n"),
        "parser.ini:3: backend_timeout: \"5 minutes\" is not a duration (seconds like 30, or with a unit: 500ms, 10s, 2m, 1h)"
    );
    assert_eq!(
        load_error("[DEFAULT]\nconnect_timeout = 0\n"),
        "parser.ini:2: connect_timeout: \"0\" is not allowed: a timeout must be above 0 (e.g. 10 or 500ms)"
    );
    assert_eq!(
        load_error("[DEFAULT]\nport = 8080\nthis line has no equals sign\n"),
        "parser.ini:3: syntax: \"this line has no equals sign\" is not a `key = value` line"
    );
    assert_eq!(
        load_error("[DEFAULT]\nport = 8080\ndatabase = \"unterminated\nttl = 1\n"),
        "parser.ini:3: syntax: database: the value opens a \" quote that this line never closes"
    );
    // rust-ini's own syntax errors keep its line number.
    assert_eq!(
        load_error("[DEFAULT]\nport = 8080\n[DEFAULT] ; note\n"),
        "parser.ini:3: syntax: \"[DEFAULT] ; note\": a section line is just [name] (comments go on their own line)"
    );
    assert_eq!(
        load_error("[DEFAULT]\nport = 8080\n[proxy]\nthreads = 4\n"),
        "parser.ini:3: [proxy]: unknown section; settings go in [DEFAULT]"
    );
    assert_eq!(
        load_error("[DEFAULT]\nip_server1 = 127.0.0.1:99999\n"),
        "parser.ini:2: ip_server1: in \"127.0.0.1:99999\": \"99999\" is not a port number (1-65535)"
    );
}

#[test]
fn missing_file_is_reported_with_its_name() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nope.ini");
    let error = Config::load(&path).expect_err("missing file");
    assert!(matches!(error, ConfigError::Io { .. }));
    let message = error.to_string();
    let prefix = format!("{}: cannot read: ", path.display());
    assert!(message.starts_with(&prefix), "{message}");
}

#[test]
fn route_sections_are_read_from_the_file() {
    let dir = TempDir::new("route");
    let path =
        dir.file("parser.ini", "[DEFAULT]\nport = 9090\n\n[route.api]\nprefix = /api\nservers = 127.0.0.1:5000\n");
    let config = Config::load(&path).expect("valid routes");
    assert_eq!((config.port, config.routes.len(), config.routes[0].prefix.as_str()), (9090, 1, "/api"));
    let typo = dir.file("typo.ini", "[DEFAULT]\nport = 9090\n\n[route.api]\nprefix = /api\nbackends = 1\n");
    let message = Config::load(&typo).expect_err("unknown route key").to_string();
    assert!(message.contains("typo.ini:6: [route.api] backends: unknown route key"), "{message}");
}

#[test]
fn parser_binary_writes_refuses_and_overwrites() {
    let dir = TempDir::new("cli");
    let out = dir.0.join("parser.ini");
    let out_arg = out.to_str().expect("temp path is UTF-8");

    let first = parser(&[
        "--out",
        out_arg,
        "--port",
        "9999",
        "--ttl",
        "500ms",
        "--backend",
        "127.0.0.1:7001",
        "--backend",
        "[::1]",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let written = fs::read_to_string(&out).expect("parser wrote the file");
    let stdout = String::from_utf8_lossy(&first.stdout);
    // `parser > copy.ini` gives the same file: stdout is only the INI, the status line is on stderr.
    assert_eq!(stdout, written, "prints exactly what it wrote");
    assert_eq!(stderr(&first), format!("wrote {out_arg}\n"));

    let c = Config::load(&out).expect("written file loads");
    assert_eq!(c.port, 9999);
    assert_eq!(c.ttl, Duration::from_millis(500));
    let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.1:7001", "[::1]:80"]);
    assert_eq!(
        Config { port: 9999, ttl: Duration::from_millis(500), backends: c.backends.clone(), ..Config::default() },
        c
    );

    // Without --force the existing file is left byte for byte.
    let before = fs::read(&out).expect("read written file");
    let second = parser(&["--out", out_arg, "--port", "1234"]);
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(stderr(&second), format!("parser: {out_arg} already exists; use --force to overwrite it\n"));
    assert_eq!(fs::read(&out).expect("reread"), before);

    let third = parser(&["--out", out_arg, "--port", "1234", "--force"]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(Config::load(&out).map(|c| c.port), Ok(1234));
    assert_eq!(Config::load(&out).map(|c| c.backends), Ok(Config::default().backends), "no --backend: default list");
}

#[test]
fn parser_binary_rejects_bad_flags() {
    let dir = TempDir::new("bad");
    let out = dir.0.join("parser.ini");
    let out_arg = out.to_str().expect("temp path is UTF-8");

    let bad_port = parser(&["--out", out_arg, "--port", "abc"]);
    assert_eq!(bad_port.status.code(), Some(2));
    assert_eq!(stderr(&bad_port), "parser: --port: \"abc\" is not a port number (1-65535)\n");
    assert!(!out.exists(), "nothing written on a bad flag");

    let bad_ttl = parser(&["--out", out_arg, "--ttl", "-1"]);
    assert_eq!(bad_ttl.status.code(), Some(2));
    assert!(stderr(&bad_ttl).starts_with("parser: --ttl: \"-1\" is not a duration"));

    let unknown = parser(&["--out", out_arg, "--verbose"]);
    assert_eq!(unknown.status.code(), Some(2));
    let message = stderr(&unknown);
    assert!(message.starts_with("parser: unknown argument \"--verbose\"\nusage: parser "), "{message}");
    assert!(!out.exists());

    let help = parser(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: parser "));
    assert!(help.stderr.is_empty());
}

#[test]
fn the_deploy_gateway_example_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/gateway.ini");
    let config = Config::load(std::path::Path::new(path)).expect("deploy/gateway.ini is valid");
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["users", "games"]);
    assert_eq!(config.routes[1].servers.len(), 3);
}
