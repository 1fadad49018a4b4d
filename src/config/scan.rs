//! INI text to sections and keys with their `file:line` positions. rust-ini reads the syntax but reports
//! lines only for its own syntax errors, so a light scan of the raw text finds where each key and section
//! is; the scan also rejects line shapes that rust-ini would silently merge into the next key (a line
//! without `=`, an indented comment, text after a section's `]`, a quote that never closes).

use ini::Ini;

use super::error::ConfigError;

enum LineKind {
    Section(String),
    /// A key in the general part or `[DEFAULT]` (the only keys whose lines are ever reported).
    Key(String),
    /// A key in any other section.
    SectionKey {
        section: String,
        key: String,
    },
}

/// One section header or key line of the file.
pub(super) struct ScannedLine {
    number: usize,
    kind: LineKind,
}

/// Reads INI text: the line scan first (its errors are the more precise), then rust-ini for the values.
/// `file` only labels errors.
pub(super) fn read(text: &str, file: &str) -> Result<(Ini, Vec<ScannedLine>), ConfigError> {
    let lines = scan_lines(text, file)?;
    // No escapes: `database = C:\data\pibl.db` must mean what it says.
    let ini = Ini::load_from_str_noescape(text).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        line: e.line,
        message: friendly_syntax_message(&e.msg),
    })?;
    Ok((ini, lines))
}

/// rust-ini's wording assumes the reader knows its internals; reword the one users actually hit.
fn friendly_syntax_message(msg: &str) -> String {
    if msg.contains("inline comment") {
        "comments must start at the beginning of a line".to_string()
    } else if msg.contains("found EOF") {
        format!("the file ended too early ({msg})")
    } else {
        msg.to_string()
    }
}

fn scan_lines(text: &str, file: &str) -> Result<Vec<ScannedLine>, ConfigError> {
    let syntax = |number: usize, message: String| ConfigError::Syntax { file: file.to_string(), line: number, message };
    let mut out = Vec::new();
    let mut in_default = true;
    let mut section = String::new();
    let mut continuation = false;
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if continuation {
            // A value ending in `\` continues on this line; its text is the value's business.
            continuation = line.ends_with('\\');
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            if trimmed.len() != line.len() {
                // rust-ini would read an indented comment as the start of a key name.
                return Err(syntax(
                    number,
                    "comments must start at the beginning of a line (this one is indented)".to_string(),
                ));
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(syntax(
                    number,
                    format!("{trimmed:?}: a section line is just [name] (comments go on their own line)"),
                ));
            };
            let name = name.trim().to_string();
            in_default = name == "DEFAULT";
            section = name.clone();
            out.push(ScannedLine { number, kind: LineKind::Section(name) });
            continue;
        }
        let Some(split) = trimmed.find(['=', ':']) else {
            return Err(syntax(number, format!("{trimmed:?} is not a `key = value` line")));
        };
        let key = trimmed[..split].trim();
        if key.is_empty() {
            return Err(syntax(number, format!("{trimmed:?} has no key before {:?}", &trimmed[split..split + 1])));
        }
        let value = trimmed[split + 1..].trim_start();
        if let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') {
            // rust-ini would let the quoted value run on over the following lines, swallowing keys.
            if !value[1..].contains(quote) {
                return Err(syntax(
                    number,
                    format!("{key}: the value opens a {quote} quote that this line never closes"),
                ));
            }
        }
        continuation = line.ends_with('\\');
        let kind = if in_default {
            LineKind::Key(key.to_string())
        } else {
            LineKind::SectionKey { section: section.clone(), key: key.to_string() }
        };
        out.push(ScannedLine { number, kind });
    }
    Ok(out)
}

/// Line of the `nth` (0-based) occurrence of `key` in the general part or `[DEFAULT]`.
pub(super) fn key_line(lines: &[ScannedLine], key: &str, nth: usize) -> Option<usize> {
    lines.iter().filter(|l| matches!(&l.kind, LineKind::Key(k) if k == key)).nth(nth).map(|l| l.number)
}

/// Line of `key` inside `[section]`.
pub(super) fn key_line_in(lines: &[ScannedLine], section: &str, key: &str) -> Option<usize> {
    lines
        .iter()
        .find(|l| matches!(&l.kind, LineKind::SectionKey { section: s, key: k } if s == section && k == key))
        .map(|l| l.number)
}

/// Line of the `[name]` header.
pub(super) fn section_line(lines: &[ScannedLine], name: &str) -> Option<usize> {
    lines.iter().find(|l| matches!(&l.kind, LineKind::Section(s) if s == name)).map(|l| l.number)
}

/// How a `[section]` reports a bad value: `file:line: [section] key: message`, on the key's line, or
/// on the section's own line when `key` is empty (a missing key, a bad name).
pub(super) fn section_error<'a>(
    file: &'a str,
    lines: &'a [ScannedLine],
    section: &'a str,
) -> impl Fn(&str, String) -> ConfigError + 'a {
    move |key: &str, message: String| ConfigError::Invalid {
        file: file.to_string(),
        line: if key.is_empty() { section_line(lines, section) } else { key_line_in(lines, section, key) },
        key: if key.is_empty() { format!("[{section}]") } else { format!("[{section}] {key}") },
        message,
    }
}
