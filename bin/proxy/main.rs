//! `proxy`: runs pibl (data plane and management API) from `parser.ini`, or `--demo` with built-in
//! backends.

mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1};

use demo::DemoBackend;
use pibl::config::{BackendAddr, Config};
use pibl::{observe::logging, Pibl};

const USAGE: &str = "\
usage: proxy [--config FILE] [--demo] [--log-level LEVEL] [--check-config]

  --config FILE      INI file to load (default ./parser.ini; write one with `parser`)
  --check-config     validate the INI file, print a summary and exit: 0 if it is valid,
                     2 if not (like `nginx -t`)
  --demo             start three demo backends on loopback and balance across them
                     (uses the built-in defaults and ./pibl-demo.db unless --config is given)
  --log-level LEVEL  off, error, warn, info, debug or trace (overrides log_level)
  -h, --help         show this help
  -V, --version      show the version";

struct Args {
    config: Option<PathBuf>,
    demo: bool,
    check_config: bool,
    log_level: Option<log::LevelFilter>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { config: None, demo: false, check_config: false, log_level: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = Some(it.next().ok_or("--config needs a file name")?.into()),
            "--demo" => args.demo = true,
            "--check-config" | "-t" => args.check_config = true,
            "--log-level" => {
                let value = it.next().ok_or("--log-level needs a level")?;
                args.log_level =
                    Some(logging::parse_level(&value).ok_or(format!("--log-level: unknown level {value:?}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("pibl proxy {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.check_config && args.demo {
        return Err("--check-config checks a file; it does not go with --demo".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("proxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = match (&args.config, args.demo) {
        (None, true) => Config::default(),
        (path, _) => {
            let path = path.clone().unwrap_or_else(|| PathBuf::from("parser.ini"));
            match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    if !path.exists() {
                        eprintln!("hint: run `cargo run --bin parser` to write a parser.ini, or `proxy --demo` to try pibl without one");
                    }
                    return ExitCode::from(2);
                }
            }
        }
    };
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    if let Err(e) = config.apply_env() {
        eprintln!("proxy: {e}");
        return ExitCode::from(2);
    }
    if args.check_config {
        return check_config(args.config.as_deref().unwrap_or(Path::new("parser.ini")), &config);
    }
    logging::init(config.log_level);

    // Installed before anything listens: until then SIGTERM, SIGHUP and SIGUSR1 (logrotate) would
    // kill the process with their default action. The access log adds its own SIGUSR1 flag later.
    let (terminate, hangup) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let early_usr1 = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [(SIGTERM, &terminate), (SIGHUP, &hangup), (SIGUSR1, &early_usr1)] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            log::error!("cannot install the signal handlers: {e}");
            return ExitCode::from(1);
        }
    }

    // Kept alive for the life of the process.
    let mut demo_backends = Vec::new();
    if args.demo {
        for i in 1..=3 {
            match DemoBackend::start(&format!("demo-{i}"), 0) {
                Ok(backend) => demo_backends.push(backend),
                Err(e) => {
                    log::error!("cannot start demo backend {i}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        config.backends =
            demo_backends.iter().map(|b| BackendAddr::plain(format!("{} ({})", b.addr(), b.name), b.addr())).collect();
        if args.config.is_none() {
            config.database = PathBuf::from("pibl-demo.db");
            config.health_path = "/status".to_string();
        }
    }

    let summary = startup_summary(&config);
    let server = match Pibl::start(config) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // Registered even without an access log file: SIGUSR1 would otherwise kill the process, and
    // logrotate's postrotate sends it whatever the configuration.
    if let Err(e) = server.server().access_log().reopen_on_sigusr1() {
        log::error!("cannot install the SIGUSR1 handler (access log reopening): {e}");
        return ExitCode::from(1);
    }
    log::info!("[*] Server started successfully [{}]", server.proxy_addr());
    log::info!("[*] Management API on http://{} (POST /api/users to register)", server.api_addr());
    for line in summary {
        log::info!("{line}");
    }
    if args.demo {
        log::info!(
            "demo: open http://localhost:{}/ and reload to see each backend in turn",
            server.proxy_addr().port()
        );
    }

    // Ctrl-C through `ctrlc`; SIGTERM and SIGHUP as flags polled here, so a reload never runs inside
    // a signal handler.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(1);
    }
    loop {
        match stop_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if terminate.load(Ordering::Relaxed) {
            break;
        }
        if hangup.swap(false, Ordering::Relaxed) {
            reload(&server, args.config.as_deref(), args.demo);
        }
    }
    log::info!("shutting down: no new connections, finishing requests in flight");
    let clean = server.shutdown();
    log::info!("stopped{}", if clean { "" } else { " (some requests were cut off by shutdown_grace)" });
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the INI and swaps routes, pools and limits; a broken file keeps the old ones.
fn reload(pibl: &Pibl, config: Option<&Path>, demo: bool) {
    if demo && config.is_none() {
        log::info!("reload: the demo runs on built-in settings; nothing to re-read");
        return;
    }
    let path = config.unwrap_or(Path::new("parser.ini"));
    match Config::load(path) {
        Ok(new) => {
            pibl.server().reload(&new);
            // Certificates are swapped whole; a refused file is logged and the old ones stay.
            if let Some(https) = pibl.https() {
                if https.reload(&new, std::time::SystemTime::now()).is_ok() {
                    log::info!("reload: certificates reloaded");
                }
            }
        }
        Err(e) => log::error!("reload refused, the running configuration stays: {e}"),
    }
}

/// `--check-config`: the file has loaded (values, backends resolved); also check what only start-up
/// would find out, then report like `nginx -t`.
fn check_config(path: &Path, config: &Config) -> ExitCode {
    if let Err(e) = config.access_log_file.check() {
        eprintln!("{}: {e}", path.display());
        return ExitCode::from(2);
    }
    if let Err(e) = pibl::tls::sites::load_configured(config, std::time::SystemTime::now()) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    println!("configuration file {} is valid", path.display());
    println!(
        "listen {}, {} backend{}, {} threads, access log {}",
        SocketAddr::new(config.bind, config.port),
        config.backends.len(),
        if config.backends.len() == 1 { "" } else { "s" },
        config.threads,
        if config.access_log {
            format!("{} to {}", config.access_log_format.name(), config.access_log_file.describe())
        } else {
            "off".to_string()
        },
    );
    ExitCode::SUCCESS
}

fn startup_summary(config: &Config) -> Vec<String> {
    let backends: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    vec![
        format!("backends (round-robin): {}", backends.join(", ")),
        format!(
            "workers: {} threads, max_conn {}, buffer_size {} B, header_timeout {:?}, keepalive_timeout {:?}, backend_timeout {:?}",
            config.threads, config.max_conn, config.buffer_size, config.header_timeout, config.keepalive_timeout, config.backend_timeout
        ),
        if config.ttl.is_zero() {
            "cache: off (ttl = 0)".to_string()
        } else {
            format!(
                "cache: ttl {:?}, {} MiB, objects up to {} KiB",
                config.ttl,
                config.cache_max_bytes >> 20,
                config.cache_max_object_bytes >> 10
            )
        },
        format!(
            "gateway: {} route(s){}{}",
            config.routes.len(),
            config.rate_limit.map(|l| format!(", rate_limit {}/s per client", l.per_second)).unwrap_or_default(),
            if config.deny.is_empty() && config.allow.is_empty() { "" } else { ", deny/allow lists" }
        ),
        if config.access_log {
            format!(
                "access log: {} to {} (SIGUSR1 reopens a file)",
                config.access_log_format.name(),
                config.access_log_file.describe()
            )
        } else {
            "access log: off".to_string()
        },
        format!(
            "management API: database {}, jwt_ttl {:?}, health_interval {:?}, purge_interval {:?}",
            config.database.display(),
            config.jwt_ttl,
            config.health_interval,
            config.purge_interval
        ),
    ]
}
