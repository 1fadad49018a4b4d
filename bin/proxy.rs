//! `proxy`: runs pibl (data plane and management API) from `parser.ini`, or `--demo` with built-in
//! backends.

use std::path::PathBuf;
use std::process::ExitCode;

use pibl::config::{BackendAddr, Config};
use pibl::demo::DemoBackend;
use pibl::{logging, Pibl};

const USAGE: &str = "\
usage: proxy [--config FILE] [--demo] [--log-level LEVEL]

  --config FILE      INI file to load (default ./parser.ini; write one with `parser`)
  --demo             start three demo backends on loopback and balance across them
                     (uses the built-in defaults and ./pibl-demo.db unless --config is given)
  --log-level LEVEL  off, error, warn, info, debug or trace (overrides log_level)
  -h, --help         show this help
  -V, --version      show the version";

struct Args {
    config: Option<PathBuf>,
    demo: bool,
    log_level: Option<log::LevelFilter>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { config: None, demo: false, log_level: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = Some(it.next().ok_or("--config needs a file name")?.into()),
            "--demo" => args.demo = true,
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
    logging::init(config.log_level);

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
        config.backends = demo_backends
            .iter()
            .map(|b| BackendAddr { name: format!("{} ({})", b.addr(), b.name), addr: b.addr() })
            .collect();
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

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        log::error!("cannot install the Ctrl-C / SIGTERM handler: {e}");
        return ExitCode::from(1);
    }
    let _ = stop_rx.recv();
    log::info!("shutting down: no new connections, finishing requests in flight");
    let clean = server.shutdown();
    log::info!("stopped{}", if clean { "" } else { " (some requests were cut off by shutdown_grace)" });
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
        format!("cache: ttl {:?} (the response cache is not built yet: every request goes to a backend)", config.ttl),
        format!(
            "management API: database {}, jwt_ttl {:?}, health_interval {:?}, purge_interval {:?}",
            config.database.display(),
            config.jwt_ttl,
            config.health_interval,
            config.purge_interval
        ),
    ]
}
