//! `parser`: writes a documented `parser.ini` (defaults changed by flags); the logic is `pibl::config`.

use std::io::Write;
use std::process::ExitCode;

use pibl::config::{parser_usage, run_parser_cli, ParserCliError, ParserOutcome};

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
            let _ = std::io::stdout().lock().write_all(usage.as_bytes());
            ExitCode::SUCCESS
        }
        Ok(ParserOutcome::Wrote { path, text }) => {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{text}");
            let _ = writeln!(stdout, "wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "parser: {error}");
            if matches!(error, ParserCliError::Usage(_)) {
                let _ = write!(stderr, "{}", parser_usage());
            }
            ExitCode::from(error.exit_code())
        }
    }
}
