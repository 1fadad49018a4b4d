//! Admin rights, granted on the host and never by registration: `proxy --admin add EMAIL` creates
//! the account with a password the operator types, or confirms an existing one whose password the
//! operator knows. The grant names the account it was made for (its id and creation time, in the
//! `settings` table), so an account deleted and registered again under the same address, or one
//! registered before the operator ever ran the command, has no rights.

use std::fmt;

use super::credentials::{self, HashError};
use super::{Store, StoreError, User};

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new account was made, an admin.
    Created,
    /// The existing account (its password matched) is now an admin.
    Confirmed,
}

/// Why `add` made nobody an admin.
#[derive(Debug)]
pub enum AdminError {
    /// The account exists and the password given is not its password: someone else may have
    /// registered the address.
    NotYourAccount(String),
    Store(StoreError),
    Hash(HashError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotYourAccount(email) => write!(
                f,
                "an account {email} exists and that is not its password, so it was not made an admin: \
                 it may have been registered by someone else. Log in as it and delete it \
                 (DELETE /api/users), or use another address"
            ),
            AdminError::Store(e) => e.fmt(f),
            AdminError::Hash(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

/// E-mail addresses are compared without case everywhere: this is the form kept and compared.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

fn key(email: &str) -> String {
    format!("admin:{}", normalise_email(email))
}

/// The account a grant was made for: a re-created account has another id or creation time.
fn mark(user: &User) -> String {
    format!("{}:{}", user.id, user.created_ms)
}

/// Makes `email` an admin: creates the account with `password`, or confirms the existing one if
/// `password` is its password.
pub fn add(store: &Store, email: &str, password: &str, now_ms: u64) -> Result<Added, AdminError> {
    let email = normalise_email(email);
    let (user, added) = match store.user(&email)? {
        Some(user) => match credentials::verify_password(password, &user.password_hash).map_err(AdminError::Hash)? {
            true => (user, Added::Confirmed),
            false => return Err(AdminError::NotYourAccount(email)),
        },
        None => {
            let hash = credentials::hash_password(password).map_err(AdminError::Hash)?;
            match store.create_user(&email, &hash, now_ms)? {
                Some(user) => (user, Added::Created),
                // Registered between the two statements: treat as someone else's.
                None => return Err(AdminError::NotYourAccount(email)),
            }
        }
    };
    store.set_setting(&key(&email), &mark(&user))?;
    Ok(added)
}

/// Takes admin rights from `email`; whether it had them.
pub fn remove(store: &Store, email: &str) -> Result<bool, StoreError> {
    store.delete_setting(&key(email))
}

/// Whether `user` is the very account an admin grant was made for.
pub fn is_admin(store: &Store, user: &User) -> Result<bool, StoreError> {
    Ok(store.setting(&key(&user.email))?.is_some_and(|m| m == mark(user)))
}
