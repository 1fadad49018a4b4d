//! `parser`: writes a documented `parser.ini` (the defaults, changed by flags) and prints it. Only the
//! command line lives here: flags, usage, exit codes and the careful file write; the keys, their
//! checks and the documented INI text come from `pibl::config`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pibl::config::{BackendAddr, Config};

fn main() -> ExitCode {
    // `env::args` would panic on an argument that is not UTF-8; refuse it politely instead.
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let result = match args {
        Ok(args) => run_parser_cli(&args),
        Err(bad) => Err(ParserCliError::Usage(format!("argument {bad:?} is not valid UTF-8"))),
    };

    // Output errors (say, a closed pipe) are ignored: the file is already written, and `print!` would panic.
    match result {
        Ok(ParserOutcome::Help(usage)) => {
            let _ = io::stdout().lock().write_all(usage.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(ParserOutcome::Wrote { path, text }) => {
            // Only the INI on stdout, so `parser --out x.ini > copy.ini` gives a file that loads; the
            // status line is for the person at the terminal.
            let _ = write!(io::stdout().lock(), "{text}");
            let _ = writeln!(io::stderr().lock(), "wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut stderr = io::stderr().lock();
            let _ = writeln!(stderr, "parser: {error}");
            if matches!(error, ParserCliError::Usage(_)) {
                let _ = write!(stderr, "{}", parser_usage());
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// What [`run_parser_cli`] did, for the binary to print.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParserOutcome {
    /// `-h`/`--help`: print this text on stdout and exit 0.
    Help(String),
    /// The file at `path` now holds `text`.
    Wrote { path: PathBuf, text: String },
}

/// Why the `parser` command stopped. [`ParserCliError::exit_code`] gives the process status.
#[derive(Debug)]
enum ParserCliError {
    /// Unknown flag or missing flag value; the usage text should follow the message. Exit 2.
    Usage(String),
    /// A flag's value is invalid. Exit 2.
    BadValue { flag: String, message: String },
    /// The output file exists and `--force` was not given; it was left untouched. Exit 1.
    Exists { path: PathBuf },
    /// The output file could not be written. Exit 1.
    Write { path: PathBuf, source: io::Error },
}

impl ParserCliError {
    /// 2 for a wrong command line, 1 when the command line was fine but the file could not be written.
    fn exit_code(&self) -> u8 {
        match self {
            ParserCliError::Usage(_) | ParserCliError::BadValue { .. } => 2,
            ParserCliError::Exists { .. } | ParserCliError::Write { .. } => 1,
        }
    }
}

impl fmt::Display for ParserCliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParserCliError::Usage(message) => f.write_str(message),
            ParserCliError::BadValue { flag, message } => write!(f, "{flag}: {message}"),
            ParserCliError::Exists { path } => {
                write!(f, "{} already exists; use --force to overwrite it", path.display())
            }
            ParserCliError::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for ParserCliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParserCliError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The `parser` usage text, defaults filled in from [`Config::default`].
fn parser_usage() -> String {
    let d = Config::default();
    let backends: Vec<&str> = d.backends.iter().map(|b| b.name.as_str()).collect();
    format!(
        "usage: parser [--out FILE] [--port N] [--ttl DURATION] [--backend HOST[:PORT]]...\n\
         \x20             [--database FILE] [--access-log-file FILE] [--tls-cert FILE --tls-key FILE]\n\
         \x20             [--acme-domain NAME]... [--acme-email ADDRESS] [--force]\n\
         \n\
         Writes a documented pibl configuration with the defaults, changed by the flags, and prints it\n\
         on stdout (status lines go to stderr).\n\
         \n\
         \x20 --out FILE              file to write (default: parser.ini)\n\
         \x20 --port N                port the proxy listens on, 1-65535 (default: {port})\n\
         \x20 --ttl DURATION          cache lifetime: seconds, or 500ms, 2m, 1h; 0 turns the cache off (default: {ttl})\n\
         \x20 --backend HOST[:PORT]   a backend server, port 80 if left out (https://HOST[:PORT] for TLS,\n\
         \x20                         port 443); repeat for more; replaces the\n\
         \x20                         default list ({backends})\n\
         \x20 --database FILE         SQLite file of the management API (default: {database})\n\
         \x20 --access-log-file FILE  access log file, reopened on SIGUSR1; - for standard output\n\
         \x20                         (default: through the log on stderr)\n\
         \x20 --tls-cert FILE         PEM certificate chain for HTTPS, with --tls-key FILE its key;\n\
         \x20                         sets tls_port = 443 unless the file has one\n\
         \x20 --acme-domain NAME      get a certificate for NAME automatically (ACME, Let's Encrypt);\n\
         \x20                         repeat for more names; sets tls_port = 443 too\n\
         \x20 --acme-email ADDRESS    contact address of the ACME account\n\
         \x20 --force                 overwrite FILE if it already exists\n\
         \x20 -h, --help              show this help\n",
        port = d.port,
        ttl = d.key_text("ttl").unwrap_or_default(),
        backends = backends.join(", "),
        database = d.database.display(),
    )
}

/// Runs the `parser` command with `args` (the arguments after the program name): parses the flags,
/// renders the config and writes it, refusing to replace an existing file unless `--force` is given.
fn run_parser_cli(args: &[String]) -> Result<ParserOutcome, ParserCliError> {
    let mut out = PathBuf::from("parser.ini");
    let mut force = false;
    let mut config = Config::default();
    let mut backends = Vec::new();
    let mut acme_domains: Vec<String> = Vec::new();

    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // Both `--port 80` and `--port=80`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(ParserOutcome::Help(parser_usage())),
            "--force" => {
                if inline.is_some() {
                    return Err(ParserCliError::Usage("--force takes no value".to_string()));
                }
                force = true;
            }
            "--out" | "--port" | "--ttl" | "--backend" | "--database" | "--access-log-file" | "--tls-cert"
            | "--tls-key" | "--acme-domain" | "--acme-email" => {
                let value = match inline {
                    Some(value) => value,
                    None => args
                        .next()
                        .map(String::as_str)
                        .ok_or_else(|| ParserCliError::Usage(format!("{flag} needs a value")))?,
                };
                let bad = |message: String| ParserCliError::BadValue { flag: flag.to_string(), message };
                match flag {
                    "--out" if value.is_empty() => return Err(bad("the file name is empty".to_string())),
                    "--out" => out = PathBuf::from(value),
                    "--backend" => backends.push(BackendAddr::parse(value).map_err(|e| bad(e.to_string()))?),
                    "--acme-domain" => acme_domains.push(value.to_string()),
                    // The other flags set a `[DEFAULT]` key, checked exactly as the file's value would be.
                    _ => {
                        let key = match flag {
                            "--port" => "port",
                            "--ttl" => "ttl",
                            "--database" => "database",
                            "--tls-cert" => "tls_cert",
                            "--tls-key" => "tls_key",
                            "--acme-email" => "acme_email",
                            _ => "access_log_file",
                        };
                        config.set_key(key, value).map_err(|e| bad(e.to_string()))?;
                    }
                }
            }
            _ => return Err(ParserCliError::Usage(format!("unknown argument {arg:?}"))),
        }
    }
    if !backends.is_empty() {
        config.backends = backends;
    }
    if !acme_domains.is_empty() {
        config
            .set_key("acme_domains", &acme_domains.join(","))
            .map_err(|e| ParserCliError::BadValue { flag: "--acme-domain".to_string(), message: e.to_string() })?;
    }
    if config.tls_cert.as_os_str().is_empty() != config.tls_key.as_os_str().is_empty() {
        return Err(ParserCliError::Usage("--tls-cert and --tls-key go together".to_string()));
    }
    let wants_tls = !config.tls_cert.as_os_str().is_empty() || !config.acme_domains.is_empty();
    if wants_tls && config.tls_port == 0 {
        config.tls_port = 443;
    }

    let text = config.to_ini();
    write_file(&out, &text, force)?;
    Ok(ParserOutcome::Wrote { path: out, text })
}

/// `create_new` makes "does it exist?" and "create it" one step, so an existing file is never touched.
fn write_file(path: &Path, text: &str, force: bool) -> Result<(), ParserCliError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let write_error = |source: io::Error| ParserCliError::Write { path: path.to_path_buf(), source };
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            ParserCliError::Exists { path: path.to_path_buf() }
        } else {
            write_error(source)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.flush().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_flags() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(run_parser_cli(&args(&["-h"])), Ok(ParserOutcome::Help(_))));
        let e = run_parser_cli(&args(&["--bogus"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "unknown argument \"--bogus\"".to_string()));
        let e = run_parser_cli(&args(&["--port"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "--port needs a value".to_string()));
        let e = run_parser_cli(&args(&["--port=abc"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "--port: \"abc\" is not a port number (1-65535)".to_string()));
        let e = run_parser_cli(&args(&["--ttl", "soon"])).unwrap_err();
        assert!(e.to_string().starts_with("--ttl: \"soon\" is not a duration"));
        assert_eq!(run_parser_cli(&args(&["--force=yes"])).unwrap_err().exit_code(), 2);
        assert_eq!(run_parser_cli(&args(&["--out", ""])).unwrap_err().exit_code(), 2);
        let e = run_parser_cli(&args(&["--database", " "])).unwrap_err();
        assert_eq!(e.to_string(), "--database: has no value: give the SQLite file name, e.g. pibl.db");
        let e = run_parser_cli(&args(&["--tls-cert", "a.crt"])).unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "--tls-cert and --tls-key go together".to_string()));
        let e = run_parser_cli(&args(&["--acme-domain", "*.example.com"])).unwrap_err();
        assert!(e.to_string().starts_with("--acme-domain: \"*.example.com\": a wildcard"), "{e}");
        let e = run_parser_cli(&args(&["--acme-email", "nobody"])).unwrap_err();
        assert!(e.to_string().starts_with("--acme-email: \"nobody\" is not an e-mail address"), "{e}");
    }

    #[test]
    fn tls_and_acme_flags_are_written_and_turn_on_the_tls_port() {
        let out = std::env::temp_dir().join(format!("pibl-parser-tls-{}.ini", std::process::id()));
        let flags = [
            "--out",
            out.to_str().unwrap(),
            "--force",
            "--tls-cert=/etc/pibl/site.crt",
            "--tls-key",
            "/etc/pibl/site.key",
            "--acme-domain",
            "Example.com",
            "--acme-domain=www.example.com",
            "--acme-email",
            "ops@example.com",
        ];
        let args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let Ok(ParserOutcome::Wrote { text, .. }) = run_parser_cli(&args) else { panic!("written") };
        let _ = std::fs::remove_file(&out);
        let config = Config::from_ini_str(&text, "written").expect("the written file loads");
        assert_eq!(config.tls_port, 443);
        assert_eq!(config.tls_cert, PathBuf::from("/etc/pibl/site.crt"));
        assert_eq!(config.tls_key, PathBuf::from("/etc/pibl/site.key"));
        assert_eq!(config.acme_domains, ["example.com", "www.example.com"]);
        assert_eq!(config.acme_email, "ops@example.com");
    }
}
