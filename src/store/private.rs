//! Files only pibl's own user may read: the database with its `-wal` and `-shm` side files (they hold
//! password hashes and, unless it comes from elsewhere, the token signing secret) and the
//! `jwt_secret_file`. New files are created `0600`; a file another local user can read is refused at
//! start-up with the `chmod` that fixes it, since anyone who reads the secret can sign an admin token.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Shortest signing secret accepted from a file or the environment (HS256 wants at least 256 bits of
/// key; 32 characters is the floor a human-made secret should meet).
pub const MIN_SECRET_LEN: usize = 32;

/// Why a private file could not be used.
#[derive(Debug)]
pub enum PrivateError {
    /// Group or others may read or write the file.
    Exposed {
        path: PathBuf,
        mode: u32,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The secret file holds fewer than [`MIN_SECRET_LEN`] characters.
    ShortSecret {
        path: PathBuf,
        len: usize,
    },
}

impl fmt::Display for PrivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateError::Exposed { path, mode } => write!(
                f,
                "{} is readable by other users of this host (mode {mode:04o}); it holds secrets anyone could \
                 use to sign admin tokens. Fix it with `chmod 600 {}` (and its -wal and -shm files if any)",
                path.display(),
                path.display()
            ),
            PrivateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            PrivateError::ShortSecret { path, len } => write!(
                f,
                "{} holds a secret of {len} characters; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PrivateError {}

/// `path` with `suffix` appended to its file name (`pibl.db` → `pibl.db-wal`).
pub fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` empty with mode `0600` unless it exists, so SQLite (which gives its side files the
/// database's mode) never makes a file others can read.
pub fn create(path: &Path) -> Result<(), PrivateError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(PrivateError::Io { path: path.to_path_buf(), source }),
    }
}

/// Refuses `path` when group or others have any access to it; a missing file passes.
pub fn check(path: &Path) -> Result<(), PrivateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(PrivateError::Exposed { path: path.to_path_buf(), mode });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PrivateError::Io { path: path.to_path_buf(), source }),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Checks the database at `path` and its side files.
pub fn check_database(path: &Path) -> Result<(), PrivateError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        check(&side_file(path, suffix))?;
    }
    Ok(())
}

/// Reads the signing secret from `path`, which must be private; surrounding whitespace (the newline
/// an editor adds) is not part of it.
pub fn read_secret(path: &Path) -> Result<String, PrivateError> {
    check(path)?;
    let text = fs::read_to_string(path).map_err(|source| PrivateError::Io { path: path.to_path_buf(), source })?;
    let secret = text.trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(PrivateError::ShortSecret { path: path.to_path_buf(), len: secret.len() });
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn created_private_and_exposed_files_refused() {
        let dir = std::env::temp_dir().join(format!("pibl-private-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let file = dir.join("secret");
        let _ = fs::remove_file(&file);
        create(&file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        fs::write(&file, "short\n").unwrap();
        assert!(matches!(read_secret(&file), Err(PrivateError::ShortSecret { len: 5, .. })));
        fs::write(&file, format!("{}\n", "k".repeat(40))).unwrap();
        assert_eq!(read_secret(&file).unwrap(), "k".repeat(40));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&file).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(check(&dir.join("missing")).is_ok());
        assert_eq!(side_file(&file, "-wal"), dir.join("secret-wal"));
        let _ = fs::remove_dir_all(&dir);
    }
}
