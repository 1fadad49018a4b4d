//! `proxy --copy-database FROM TO`: moves an instance's SQLite file into an empty PostgreSQL
//! database, keeping every id (so tokens, app keys and log cursors stay valid), in one transaction,
//! then checks that each table holds as many rows as the source.

use std::fmt;

use super::model::{Durability, StoreError, TABLES};
use super::Store;

/// Why a copy did not happen, or did not check out.
#[derive(Debug)]
pub enum CopyError {
    /// Opening or reading one side failed.
    Store { side: &'static str, source: StoreError },
    /// The copy goes from a SQLite file into PostgreSQL; this pair is not that.
    Direction,
    /// The SQLite file to copy from is not there.
    NoSource(std::path::PathBuf),
    /// The target already holds data; copying would mix two management planes.
    NotEmpty { table: &'static str, rows: i64 },
    /// After the copy a table's count differs from the source's.
    Mismatch { table: &'static str, source: i64, target: i64 },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Store { side, source } => write!(f, "{side}: {source}"),
            CopyError::Direction => f.write_str("the copy goes from a SQLite file (FROM) into a postgres:// URL (TO)"),
            CopyError::NoSource(path) => write!(f, "FROM: {} does not exist", path.display()),
            CopyError::NotEmpty { table, rows } => write!(
                f,
                "the target is not empty ({table} has {rows} rows): copy into a new database, or empty it first"
            ),
            CopyError::Mismatch { table, source, target } => {
                write!(f, "{table}: {source} rows in the source but {target} in the target")
            }
        }
    }
}

impl std::error::Error for CopyError {}

/// Rows copied per table, in [`TABLES`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub counts: Vec<(&'static str, i64)>,
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Copies `from` (a SQLite file) into `to` (an empty PostgreSQL database, migrated on open), then
/// compares the counts of every table.
pub fn copy_database(from: &super::Database, to: &super::Database) -> Result<CopyReport, CopyError> {
    if !matches!((from, to), (super::Database::Sqlite(_), super::Database::Postgres(_))) {
        return Err(CopyError::Direction);
    }
    if let super::Database::Sqlite(path) = from {
        if !path.exists() {
            return Err(CopyError::NoSource(path.clone()));
        }
    }
    let source = Store::connect(from, Durability::Full, usize::MAX)
        .map_err(|source| CopyError::Store { side: "FROM", source })?;
    let target =
        Store::connect(to, Durability::Full, usize::MAX).map_err(|source| CopyError::Store { side: "TO", source })?;
    let (Some(sqlite), Some(pg)) = (source.sqlite(), target.postgres()) else { return Err(CopyError::Direction) };
    let before = pg.counts().map_err(|source| CopyError::Store { side: "TO", source })?;
    if let Some((table, rows)) = TABLES.iter().zip(&before).find(|(_, n)| **n > 0) {
        return Err(CopyError::NotEmpty { table, rows: *rows });
    }
    let dump = sqlite.dump().map_err(|source| CopyError::Store { side: "FROM", source })?;
    let expected = sqlite.counts().map_err(|source| CopyError::Store { side: "FROM", source })?;
    pg.load_dump(&dump).map_err(|source| CopyError::Store { side: "TO", source })?;
    let after = pg.counts().map_err(|source| CopyError::Store { side: "TO", source })?;
    let mut counts = Vec::new();
    for ((table, source), target) in TABLES.iter().zip(expected).zip(after) {
        if source != target {
            return Err(CopyError::Mismatch { table, source, target });
        }
        counts.push((*table, target));
    }
    Ok(CopyReport { counts })
}
