//! `proxy`: runs pibl (data plane and management API) from `parser.ini`, or `--demo` with built-in
//! backends.

mod demo;
mod demo_admin;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use demo::DemoBackend;
use pibl::api::json::check_email;
use pibl::clock::Clock;
use pibl::config::{BackendAddr, Config};
use pibl::store::admins::{self, Added};
use pibl::store::Database;
use pibl::store::{Durability, Store};
use pibl::{observe::logging, Pibl};

const USAGE: &str = "\
usage: proxy [--config FILE] [--demo] [--log-level LEVEL] [--check-config]
       proxy --copy-database FROM TO
       proxy [--config FILE] --admin add|remove EMAIL

  --config FILE      INI file to load (default ./parser.ini; write one with `parser`)
  --check-config     validate the INI file, print a summary and exit: 0 if it is valid,
                     2 if not (like `nginx -t`)
  --demo             start three demo backends on 127.0.0.1:9001-9003 and balance across them,
                     with an admin account (printed at start-up) in ./pibl-demo.db; with --config,
                     the file's settings and database (./pibl-demo.db if it names none).
                     PIBL_DEMO_PORTS=8080,5000,9001,9002,9003 changes the proxy, API and
                     backend ports
  --log-level LEVEL  off, error, warn, info, debug or trace (overrides log_level)
  --copy-database FROM TO
                     copy a SQLite file (FROM) into an empty PostgreSQL database
                     (TO, a postgres:// URL), check the row counts and exit: 0 if
                     they match; the way from one host to several instances
  --admin add EMAIL  make EMAIL an admin in the configured database: creates the account, or
                     confirms an existing one whose password you know. Asks for the password
                     on the terminal, or reads one line from stdin when it is not a terminal
  --admin remove EMAIL  take admin rights from EMAIL
  -h, --help         show this help
  -V, --version      show the version";

/// Printed when the INI file does not exist. The commands are the README's (`--release`), so
/// following the hint reuses the build the README made instead of starting a debug one.
const MISSING_CONFIG_HINT: &str = "hint: write one with `cargo run --release --bin parser` (it prints what it wrote), \
or try pibl without one: `cargo run --release --bin proxy -- --demo`";

/// `--admin add|remove EMAIL`.
enum AdminCommand {
    Add(String),
    Remove(String),
}

struct Args {
    admin: Option<AdminCommand>,
    /// `--copy-database FROM TO`
    copy: Option<(String, String)>,
    config: Option<PathBuf>,
    demo: bool,
    check_config: bool,
    log_level: Option<log::LevelFilter>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { copy: None, admin: None, config: None, demo: false, check_config: false, log_level: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = Some(it.next().ok_or("--config needs a file name")?.into()),
            "--demo" => args.demo = true,
            "--copy-database" => {
                let from = it.next().ok_or("--copy-database needs FROM (a SQLite file) and TO (a postgres:// URL)")?;
                let to = it.next().ok_or("--copy-database needs TO (a postgres:// URL) after FROM")?;
                args.copy = Some((from, to));
            }
            "--admin" => {
                let action = it.next().ok_or("--admin needs add or remove and an e-mail address")?;
                let email = it.next().ok_or("--admin needs an e-mail address")?;
                args.admin = Some(match action.as_str() {
                    "add" => AdminCommand::Add(email),
                    "remove" => AdminCommand::Remove(email),
                    other => return Err(format!("--admin {other:?}: use add or remove")),
                });
            }
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
    if args.admin.is_some() && (args.demo || args.check_config) {
        return Err("--admin manages accounts; it does not go with --demo or --check-config".into());
    }
    if args.check_config && args.demo {
        return Err("--check-config checks a file; it does not go with --demo".into());
    }
    Ok(args)
}

/// What the main thread is asked to do once the server runs.
enum Control {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// Ctrl-C or SIGTERM: shut down gracefully.
    Stop,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("proxy: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some((from, to)) = &args.copy {
        return copy_database(from, to);
    }
    let mut config = match (&args.config, args.demo) {
        (None, true) => Config::default(),
        (path, _) => {
            let path = path.clone().unwrap_or_else(|| PathBuf::from("parser.ini"));
            match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    if !path.exists() {
                        eprintln!("{MISSING_CONFIG_HINT}");
                    }
                    return ExitCode::from(2);
                }
            }
        }
    };
    let demo_ports = match demo_ports() {
        Ok(ports) => ports,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    if let Err(e) = config.apply_env() {
        eprintln!("proxy: {e}");
        return ExitCode::from(2);
    }
    if let Some(command) = &args.admin {
        return admin(&config, command);
    }
    if args.check_config {
        return check_config(args.config.as_deref().unwrap_or(Path::new("parser.ini")), &config);
    }
    logging::init(config.log_level);
    if !args.demo || args.config.is_some() {
        for line in file_advice(args.config.as_deref().unwrap_or(Path::new("parser.ini"))) {
            log::warn!("{line}");
        }
    }

    // Installed before anything listens: until then SIGTERM, SIGHUP and SIGUSR1 (logrotate) would
    // kill the process with their default action. SIGTERM and SIGHUP wait in `signals` until the
    // server runs; the access log adds its own SIGUSR1 flag later.
    let early_usr1 = Arc::new(AtomicBool::new(false));
    let signals =
        signal_hook::flag::register(SIGUSR1, Arc::clone(&early_usr1)).and_then(|_| Signals::new([SIGTERM, SIGHUP]));
    let mut signals = match signals {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot install the signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    // Kept alive for the life of the process.
    let mut demo_backends = Vec::new();
    let mut demo_notes = Vec::new();
    if args.demo {
        match setup_demo(&mut config, args.config.as_deref(), demo_ports) {
            Ok((backends, notes)) => (demo_backends, demo_notes) = (backends, notes),
            Err(e) => {
                log::error!("cannot start the demo: {e}");
                return ExitCode::from(1);
            }
        }
    }

    // With --demo --config, what the demo changed is applied again to the file SIGHUP re-reads.
    let demo_fit = args.demo.then(|| config.clone());
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
            "demo: open http://localhost:{}/ and reload to see each backend in turn ({})",
            server.proxy_addr().port(),
            demo_backends
                .iter()
                .map(|b| format!("{} on port {}", b.name, b.addr().port()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for note in demo_notes {
            log::info!("{note}");
        }
    }

    // Ctrl-C through `ctrlc`, SIGTERM and SIGHUP through a thread that reads them from
    // signal-hook's pipe: both become messages, so a reload never runs inside a signal handler and
    // this thread sleeps until one comes.
    let (control_tx, control) = crossbeam_channel::unbounded::<Control>();
    let stop_tx = control_tx.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(Control::Stop);
    }) {
        log::error!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(1);
    }
    let signals_handle = signals.handle();
    let signal_thread = std::thread::Builder::new().name("pibl-signals".into()).spawn(move || {
        for signal in signals.forever() {
            let message = if signal == SIGHUP { Control::Reload } else { Control::Stop };
            if control_tx.send(message).is_err() {
                break;
            }
        }
    });
    if let Err(e) = signal_thread {
        log::error!("cannot start the signal thread: {e}");
        return ExitCode::from(1);
    }
    // Anything but a reload (a stop, or every sender gone) ends the wait.
    while let Ok(Control::Reload) = control.recv() {
        reload(&server, args.config.as_deref(), demo_fit.as_ref());
    }
    signals_handle.close();
    log::info!("shutting down: no new connections, finishing requests in flight");
    let clean = server.shutdown();
    log::info!("stopped{}", if clean { "" } else { " (some requests were cut off by shutdown_grace)" });
    ExitCode::SUCCESS
}

/// `--copy-database FROM TO`: SQLite file into an empty PostgreSQL database, checked by counts.
fn copy_database(from: &str, to: &str) -> ExitCode {
    logging::init(log::LevelFilter::Warn);
    let parse = |side: &str, value: &str| Database::parse(value).map_err(|e| format!("{side} {e}"));
    let (from, to) = match (parse("FROM", from), parse("TO", to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("proxy: --copy-database: {e}");
            return ExitCode::from(2);
        }
    };
    match pibl::store::copy::copy_database(&from, &to) {
        Ok(report) => {
            println!("copied {from} into {to}: {report}; every count matches");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy: --copy-database {from} -> {to}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--admin add|remove EMAIL` on the configured database, without starting anything.
fn admin(config: &Config, command: &AdminCommand) -> ExitCode {
    let opened = Database::from_setting(&config.database)
        .and_then(|db| Store::connect(&db, Durability::Full, config.log_retention).map_err(|e| format!("{db}: {e}")));
    let store = match opened {
        Ok(store) => store,
        Err(e) => {
            eprintln!("proxy: database {e}");
            return ExitCode::from(1);
        }
    };
    let email = match command {
        AdminCommand::Add(email) | AdminCommand::Remove(email) => admins::normalise_email(email),
    };
    if let Err(why) = check_email(&email) {
        eprintln!("proxy: {email}: {why}");
        return ExitCode::from(2);
    }
    let result = match command {
        AdminCommand::Remove(_) => match admins::remove(&store, &email) {
            Ok(true) => Ok(format!("{email} is no longer an admin")),
            Ok(false) => Ok(format!("{email} was not an admin")),
            Err(e) => Err(e.to_string()),
        },
        AdminCommand::Add(_) => {
            let exists = matches!(store.user(&email), Ok(Some(_)));
            let prompt = if exists { format!("password of {email}: ") } else { format!("new password for {email}: ") };
            read_password(&prompt, !exists).and_then(|password| {
                let now_ms = Clock::system().now_ms();
                match admins::add(&store, &email, &password, now_ms) {
                    Ok(Added::Created) => Ok(format!("created {email}, an admin")),
                    Ok(Added::Confirmed) => Ok(format!("{email} is an admin")),
                    Err(e) => Err(e.to_string()),
                }
            })
        }
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// `PIBL_DEMO_PORTS`: the demo's proxy, API and three backend ports, for a demo beside another one
/// (or beside tests); `None` when unset.
const DEMO_PORTS_ENV: &str = "PIBL_DEMO_PORTS";

fn demo_ports() -> Result<Option<[u16; 5]>, String> {
    let Ok(text) = std::env::var(DEMO_PORTS_ENV) else { return Ok(None) };
    let bad = || {
        format!("{DEMO_PORTS_ENV}={text:?}: give five ports: proxy, API and three backends (8080,5000,9001,9002,9003)")
    };
    let ports: Vec<u16> =
        text.split(',').map(|p| p.trim().parse::<u16>()).collect::<Result<_, _>>().map_err(|_| bad())?;
    ports.try_into().map(Some).map_err(|_| bad())
}

/// The demo's route for `/favicon.ico`.
const DEMO_ICON_ROUTE: &str = "demo-favicon";

/// Starts the demo backends and fits `config` to them: backends, health checks on `/status`, the
/// demo database (unless the file names one), the demo admin, and the favicon's own route. Returns
/// the backends (to keep alive) and the lines to log once pibl runs.
fn setup_demo(
    config: &mut Config,
    file: Option<&Path>,
    ports: Option<[u16; 5]>,
) -> Result<(Vec<DemoBackend>, Vec<String>), String> {
    if let Some([proxy, api, ..]) = ports {
        (config.port, config.api_port) = (proxy, api);
    }
    let backend_ports = ports.map_or([9001, 9002, 9003], |[_, _, a, b, c]| [a, b, c]);
    let (backends, warnings) = demo::start_all(&backend_ports).map_err(|e| e.to_string())?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    config.backends =
        backends.iter().map(|b| BackendAddr::plain(format!("{} ({})", b.addr(), b.name), b.addr())).collect();
    if config.health_path.is_empty() {
        config.health_path = "/status".to_string();
    }

    let mut notes = Vec::new();
    let names_database = file.is_some() && config.database != Config::default().database;
    match file {
        Some(file) if names_database => {
            notes.push(format!("demo: database {} (from {})", config.database.display(), file.display()))
        }
        Some(file) => {
            config.database = PathBuf::from("pibl-demo.db");
            notes.push(format!("demo: database ./pibl-demo.db ({} names none)", file.display()));
        }
        None => {
            if std::env::var_os(pibl::config::DATABASE_URL_ENV).is_some() {
                notes.push(format!(
                    "demo: {} is ignored; the demo runs on ./pibl-demo.db (name a database in a --config file \
                     to try another)",
                    pibl::config::DATABASE_URL_ENV
                ));
            }
            config.database = PathBuf::from("pibl-demo.db");
            notes.push("demo: database ./pibl-demo.db".to_string());
        }
    }

    let admin = demo_admin::ensure(&config.database, config.log_retention, pibl::clock::Clock::system().now_ms())?;
    notes.push(format!(
        "demo: admin {} with password {} (also in {}; `curl -d @{} ...` logs in); it may list and lift lock-outs",
        demo_admin::ADMIN_EMAIL,
        admin.password,
        admin.file.display(),
        admin.file.display()
    ));

    // A browser asks for /favicon.ico after each page. Through the default pool that would take a
    // round-robin turn, and reloading would skip a backend; its own route keeps its own turns (and
    // the icon is cached for a day anyway).
    if !config.routes.iter().any(|r| r.prefix == "/favicon.ico") {
        let servers: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
        let ini = format!("[route.{DEMO_ICON_ROUTE}]\nprefix = /favicon.ico\nservers = {}\n", servers.join(", "));
        let route = Config::from_ini_str(&ini, "demo").map_err(|e| e.to_string())?.routes;
        config.routes.extend(route);
    }
    Ok((backends, notes))
}

/// Reads a password: on a terminal without echo (twice when `confirm`, for a new one), otherwise one
/// line of stdin, for scripts. Its length is checked as registration checks it.
fn read_password(prompt: &str, confirm: bool) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let read_line = |prompt: &str| -> Result<String, String> {
        let tty = stdin.is_terminal();
        let mut hidden = false;
        if tty {
            eprint!("{prompt}");
            // `stty` on the inherited terminal: no terminal library for one switch of the echo.
            hidden = std::process::Command::new("stty").arg("-echo").status().is_ok_and(|s| s.success());
        }
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if hidden {
            let _ = std::process::Command::new("stty").arg("echo").status();
            eprintln!();
        }
        read.map_err(|e| format!("reading the password: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let password = read_line(prompt)?;
    let n = password.chars().count();
    if !(6..=30).contains(&n) {
        return Err(format!("the password must be 6 to 30 characters long (it has {n})"));
    }
    if confirm && stdin.is_terminal() && read_line("again: ")? != password {
        return Err("the two passwords differ".into());
    }
    Ok(password)
}

/// SIGHUP: re-reads the INI and swaps routes, pools and limits; a broken file keeps the old ones.
/// Under `--demo` (`demo_fit` is the configuration it started with) the demo backends, their
/// health path and the icon's route stay.
fn reload(pibl: &Pibl, config: Option<&Path>, demo_fit: Option<&Config>) {
    if demo_fit.is_some() && config.is_none() {
        log::info!("reload: the demo runs on built-in settings; nothing to re-read");
        return;
    }
    let path = config.unwrap_or(Path::new("parser.ini"));
    match Config::load(path) {
        Ok(mut new) => {
            if let Some(fitted) = demo_fit {
                new.backends = fitted.backends.clone();
                if new.health_path.is_empty() {
                    new.health_path = fitted.health_path.clone();
                }
                let icon = fitted.routes.iter().find(|r| r.name == DEMO_ICON_ROUTE);
                if let Some(icon) = icon.filter(|i| !new.routes.iter().any(|r| r.prefix == i.prefix)) {
                    new.routes.push(icon.clone());
                }
            }
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
    for line in file_advice(path) {
        eprintln!("{line}");
    }
    if let Err(e) = pibl::tls::sites::load_configured(config, std::time::SystemTime::now()) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    println!("configuration file {} is valid", path.display());
    println!(
        "listen {}, {} backend{}, {}, access log {}",
        SocketAddr::new(config.bind, config.port),
        config.backends.len(),
        if config.backends.len() == 1 { "" } else { "s" },
        describe_workers(config),
        if config.access_log {
            format!("{} to {}", config.access_log_format.name(), config.access_log_file.describe())
        } else {
            "off".to_string()
        },
    );
    ExitCode::SUCCESS
}

/// [`pibl::config::advice`] on the file at `path` (empty, or no section header); nothing if it
/// cannot be read (loading it has already said why).
fn file_advice(path: &Path) -> Vec<String> {
    let label = path.display().to_string();
    std::fs::read_to_string(path).map(|text| pibl::config::advice(&text, &label)).unwrap_or_default()
}

/// "2 event loops".
fn describe_workers(config: &Config) -> String {
    let count = config.thread_count();
    format!("{count} event loop{}", if count == 1 { "" } else { "s" })
}

fn startup_summary(config: &Config) -> Vec<String> {
    let backends: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    vec![
        format!("backends (round-robin): {}", backends.join(", ")),
        format!(
            "workers: {}, max_conn {}, buffer_size {} B, header_timeout {:?}, keepalive_timeout {:?}, backend_timeout {:?}",
            describe_workers(config),
            config.max_conn,
            config.buffer_size, config.header_timeout, config.keepalive_timeout, config.backend_timeout
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
            // Typed to hide a PostgreSQL password; an invalid value fails the start right after.
            Database::from_setting(&config.database).map_or_else(|e| e, |d| d.to_string()),
            config.jwt_ttl,
            config.health_interval,
            config.purge_interval
        ),
    ]
}
