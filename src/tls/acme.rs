//! Certificates from an ACME server (RFC 8555) with HTTP-01 challenges: an account kept in
//! `acme_dir`, one order for all `acme_domains`, the certificate and its fresh key stored there with
//! mode 0600 and installed into the [`CertStore`], renewed 30 days before expiry (or at a third of
//! the lifetime left, for short-lived certificates), with back-off when the server or network fails.
//!
//! The protocol, JWS signing and CSR are `instant-acme`'s; it is async, so the client owns a small
//! current-thread tokio runtime and is driven from one background thread.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy, RevocationReason, RevocationRequest,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::challenge::Challenges;
use super::error::CertError;
use super::pem::{load_pair, pair_from_pem, LoadedCert};
use super::sites::acme_files;
use super::store::CertStore;
use crate::background::Background;
use crate::clock::Clock;
use crate::config::Config;

/// Renew this long before expiry (Let's Encrypt's advice for 90-day certificates).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How often the thread looks at the certificate when nothing is due.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// First wait after a failed order; doubled on each failure in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How long one order may wait on the server to validate and issue.
const ORDER_PATIENCE: Duration = Duration::from_secs(120);

/// The `acme_*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: String,
    pub domains: Vec<String>,
    pub dir: PathBuf,
    /// A root for the ACME server's own HTTPS (test servers); `None` = the system roots.
    pub ca_root: Option<PathBuf>,
}

impl AcmeSettings {
    /// `None` when `acme_domains` is empty (no ACME).
    pub fn from_config(c: &Config) -> Option<AcmeSettings> {
        (!c.acme_domains.is_empty()).then(|| AcmeSettings {
            directory: c.acme_directory.clone(),
            email: c.acme_email.clone(),
            domains: c.acme_domains.clone(),
            dir: c.acme_dir.clone(),
            ca_root: (!c.acme_ca_root.as_os_str().is_empty()).then(|| c.acme_ca_root.clone()),
        })
    }
}

/// Why getting a certificate failed, by whose fault.
#[derive(Debug)]
pub enum AcmeError {
    /// The ACME server refused or failed (or could not be reached): retried with back-off.
    Server(String),
    /// `acme_dir` could not be written or read: the operator's to fix.
    Storage(String),
    /// What the server issued does not load (never expected from a real CA).
    Issued(CertError),
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcmeError::Server(e) => write!(f, "ACME server: {e}"),
            AcmeError::Storage(e) => write!(f, "ACME storage: {e}"),
            AcmeError::Issued(e) => write!(f, "issued certificate refused: {e}"),
        }
    }
}

impl std::error::Error for AcmeError {}

fn server(e: impl fmt::Display) -> AcmeError {
    AcmeError::Server(e.to_string())
}

fn storage(path: &Path, e: impl fmt::Display) -> AcmeError {
    AcmeError::Storage(format!("{}: {e}", path.display()))
}

/// What one look at the certificate did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Nothing due; whole days left.
    Valid(i64),
    /// A new certificate was ordered and installed.
    Issued,
}

/// The account file: the credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// An ACME client for one set of domains, serving its certificate through a [`CertStore`].
pub struct AcmeClient {
    settings: AcmeSettings,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    runtime: tokio::runtime::Runtime,
    account: Option<Account>,
    current: Option<LoadedCert>,
    /// A certificate replaced on an operator's request whose revocation the server has not yet
    /// accepted: retried at each look until it is.
    unrevoked: Option<LoadedCert>,
    days_left: Arc<AtomicI64>,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// A client that publishes its challenges in `challenges` and installs into `store`; a
    /// certificate already stored in `acme_dir` is loaded and installed now.
    pub fn new(
        settings: AcmeSettings,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
        now: SystemTime,
    ) -> Result<AcmeClient, AcmeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AcmeError::Storage(format!("cannot start the ACME runtime: {e}")))?;
        let mut client = AcmeClient {
            settings,
            store,
            challenges,
            runtime,
            account: None,
            current: None,
            unrevoked: None,
            days_left: Arc::new(AtomicI64::new(-1)),
        };
        if let Some((cert, key)) = acme_files(&client.settings.dir, &client.settings.domains) {
            if cert.exists() {
                match load_pair(&cert, &key, now) {
                    Ok(loaded) if same_names(&loaded.names, &client.settings.domains) => client.adopt(loaded, now),
                    Ok(_) => log::info!("ACME: acme_domains changed; a certificate for the new list will be ordered"),
                    Err(e) => log::warn!("{e}; a new certificate will be ordered"),
                }
            }
        }
        Ok(client)
    }

    /// The certificate being served, if any.
    pub fn current(&self) -> Option<&LoadedCert> {
        self.current.as_ref()
    }

    /// Days left on the current certificate (-1 without one): the `tls_cert_days_left` gauge.
    pub fn days_left(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.days_left)
    }

    /// Whether a new certificate should be ordered at `now`.
    pub fn is_due(&self, now: SystemTime) -> bool {
        let Some(cert) = &self.current else { return true };
        let lifetime = cert.not_after.duration_since(cert.not_before).unwrap_or_default();
        let margin = RENEW_BEFORE.min(lifetime / 3);
        match cert.not_after.duration_since(now) {
            Ok(left) => left < margin,
            Err(_) => true,
        }
    }

    /// Orders a certificate when one is due at `now`, and revokes a replaced one still waiting for it.
    pub fn check(&mut self, now: SystemTime) -> Result<Checked, AcmeError> {
        if let Some(cert) = &self.current {
            self.days_left.store(cert.days_left(now), Ordering::Relaxed);
        }
        let checked = match self.is_due(now) {
            false => Checked::Valid(self.days_left.load(Ordering::Relaxed)),
            true => {
                self.issue(now)?;
                Checked::Issued
            }
        };
        self.revoke_replaced()?;
        Ok(checked)
    }

    /// Orders, stores and installs a new certificate (with a new key), whatever the current one.
    pub fn issue(&mut self, now: SystemTime) -> Result<(), AcmeError> {
        let account = self.account()?;
        let domains = self.settings.domains.clone();
        let challenges = Arc::clone(&self.challenges);
        let (cert_pem, key_pem) = self.runtime.block_on(order_certificate(&account, &domains, &challenges))?;
        let (cert_path, key_path) = acme_files(&self.settings.dir, &domains)
            .ok_or_else(|| AcmeError::Storage("acme_domains is empty".into()))?;
        let loaded = pair_from_pem(
            cert_pem.as_bytes(),
            &cert_path.display().to_string(),
            key_pem.as_bytes(),
            &key_path.display().to_string(),
            now,
        )
        .map_err(AcmeError::Issued)?;
        make_private_dir(&self.settings.dir)?;
        // The key first: a certificate on disk without its key would fail the next start-up.
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, cert_pem.as_bytes())?;
        log::info!(
            "ACME: certificate for {} issued (serial {}, {} days left)",
            domains.join(", "),
            loaded.serial,
            loaded.days_left(now)
        );
        self.adopt(loaded, now);
        Ok(())
    }

    /// Replaces the current certificate with a newly issued one (a new key), then revokes the old
    /// one at the ACME server as superseded (the reason an account key may always give): for a key
    /// that may have leaked. The listener is never left without a valid certificate. When the
    /// revocation fails the new certificate stays served and the old one is revoked at a later
    /// [`AcmeClient::check`].
    pub fn revoke_and_reissue(&mut self, now: SystemTime) -> Result<(), AcmeError> {
        let old = self.current.clone();
        self.issue(now)?;
        if old.is_some() {
            self.unrevoked = old;
        }
        self.revoke_replaced()
    }

    /// The serial of a replaced certificate whose revocation is still to be done.
    pub fn unrevoked(&self) -> Option<&str> {
        self.unrevoked.as_ref().map(|c| c.serial.as_str())
    }

    fn revoke_replaced(&mut self) -> Result<(), AcmeError> {
        let Some(old) = self.unrevoked.clone() else { return Ok(()) };
        let account = self.account()?;
        let request = RevocationRequest { certificate: old.leaf(), reason: Some(RevocationReason::Superseded) };
        match self.runtime.block_on(account.revoke(&request)) {
            Ok(()) => log::warn!("ACME: certificate serial {} revoked", old.serial),
            // Revoked already (by an earlier try whose answer was lost): what was asked holds.
            Err(e) if e.to_string().contains("alreadyRevoked") => {
                log::info!("ACME: certificate serial {} was revoked already", old.serial)
            }
            Err(e) => {
                return Err(AcmeError::Server(format!(
                    "certificate serial {} is replaced but not revoked yet: {e}",
                    old.serial
                )))
            }
        }
        self.unrevoked = None;
        Ok(())
    }

    fn adopt(&mut self, cert: LoadedCert, now: SystemTime) {
        self.days_left.store(cert.days_left(now), Ordering::Relaxed);
        self.store.install(cert.clone(), &self.settings.domains);
        self.current = Some(cert);
    }

    /// The account: from `account.json` when it belongs to this directory, else a new one (stored).
    fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let path = self.settings.dir.join("account.json");
        let stored = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(stored) if stored.directory == self.settings.directory => Some(stored.credentials),
                Ok(_) => None,
                Err(e) => return Err(storage(&path, format!("is not an account file ({e}); move it away"))),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(storage(&path, e)),
        };
        let builder = match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root).map_err(|e| storage(root, e))?,
            None => Account::builder().map_err(server)?,
        };
        let account = match stored {
            Some(credentials) => self.runtime.block_on(builder.from_credentials(credentials)).map_err(server)?,
            None => {
                let contact = format!("mailto:{}", self.settings.email);
                let contacts: Vec<&str> = if self.settings.email.is_empty() { vec![] } else { vec![&contact] };
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = self
                    .runtime
                    .block_on(builder.create(&new, self.settings.directory.clone(), None))
                    .map_err(server)?;
                let stored = StoredAccount { directory: self.settings.directory.clone(), credentials };
                let json = serde_json::to_vec_pretty(&stored).map_err(|e| storage(&path, e))?;
                make_private_dir(&self.settings.dir)?;
                write_private(&path, &json)?;
                log::info!("ACME: account {} created at {}", account.id(), self.settings.directory);
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }
}

/// One order for `domains`: publishes each HTTP-01 answer, waits for validation, finalizes with a
/// new key and returns the certificate chain and key as PEM. The answers are withdrawn however it ends.
async fn order_certificate(
    account: &Account,
    domains: &[String],
    challenges: &Challenges,
) -> Result<(String, String), AcmeError> {
    let identifiers: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(server)?;
    let mut published = Vec::new();
    let result = validate_and_finalize(&mut order, challenges, &mut published).await;
    for token in published {
        challenges.remove(&token);
    }
    result
}

async fn validate_and_finalize(
    order: &mut Order,
    challenges: &Challenges,
    published: &mut Vec<String>,
) -> Result<(String, String), AcmeError> {
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(server)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(server(format!("authorization is {other:?}"))),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| server("the server offers no http-01 challenge"))?;
            let token = challenge.token.clone();
            challenges.insert(&token, challenge.key_authorization().as_str());
            published.push(token);
            challenge.set_ready().await.map_err(server)?;
        }
    }
    let retry = RetryPolicy::new().timeout(ORDER_PATIENCE);
    let status = order.poll_ready(&retry).await.map_err(server)?;
    if status != OrderStatus::Ready {
        return Err(server(format!("order is {status:?}, not ready: a challenge failed")));
    }
    let key_pem = order.finalize().await.map_err(server)?;
    let cert_pem = order.poll_certificate(&retry).await.map_err(server)?;
    Ok((cert_pem, key_pem))
}

/// Creates `dir` (mode 0700) if it is missing.
fn make_private_dir(dir: &Path) -> Result<(), AcmeError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| storage(dir, e))
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file renamed over it, so a crash
/// never leaves half a key and the key is never readable by others, not even for a moment.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // `mode` is filtered by the umask; 0600 is what we want whatever the umask.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| storage(path, e))
}

/// What the management API may ask of the running ACME thread, and what it reports back.
#[derive(Debug, Clone)]
pub struct AcmeControl {
    requests: Sender<Revoke>,
    report: Arc<Mutex<AcmeReport>>,
}

/// An operator's request to replace and revoke the certificate (`POST /api/tls/revoke`).
#[derive(Debug)]
struct Revoke {
    by: String,
}

/// The ACME thread's state, as `GET /api/tls` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeReport {
    pub directory: String,
    pub domains: Vec<String>,
    /// The certificate served for the domains: serial and expiry (`None` before the first one).
    pub serial: Option<String>,
    pub not_after: Option<SystemTime>,
    /// Who asked for a revoke-and-reissue that has not finished yet.
    pub revoke_requested_by: Option<String>,
    /// A replaced certificate whose revocation the server has not accepted yet.
    pub unrevoked: Option<String>,
    /// Why the last order or revocation failed; cleared by the next success.
    pub last_error: Option<String>,
}

/// Why a revoke-and-reissue is not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeRefused {
    /// One is under way already, asked for by this user.
    UnderWay(String),
    /// No certificate has been issued yet: there is nothing to revoke (the first order is retried
    /// on its own).
    NothingIssued,
    /// The ACME thread has stopped (pibl is shutting down).
    Stopped,
}

impl AcmeControl {
    /// A snapshot of the thread's state.
    pub fn report(&self) -> AcmeReport {
        self.report.lock().clone()
    }

    /// Asks the thread to replace the certificate with a new one and then revoke it; returns the
    /// serial that will be revoked. The work is done in the background (an order may take minutes).
    pub fn request_revoke(&self, by: &str) -> Result<String, RevokeRefused> {
        let mut report = self.report.lock();
        if let Some(who) = &report.revoke_requested_by {
            return Err(RevokeRefused::UnderWay(who.clone()));
        }
        let serial = report.serial.clone().ok_or(RevokeRefused::NothingIssued)?;
        self.requests.send(Revoke { by: by.to_string() }).map_err(|_| RevokeRefused::Stopped)?;
        report.revoke_requested_by = Some(by.to_string());
        Ok(serial)
    }
}

impl AcmeClient {
    /// Writes what the thread knows into `report` (keeping the pending request's requester).
    fn report_into(&self, report: &Mutex<AcmeReport>, outcome: &Result<(), AcmeError>) {
        let mut report = report.lock();
        report.directory = self.settings.directory.clone();
        report.domains = self.settings.domains.clone();
        report.serial = self.current.as_ref().map(|c| c.serial.clone());
        report.not_after = self.current.as_ref().map(|c| c.not_after);
        report.unrevoked = self.unrevoked.as_ref().map(|c| c.serial.clone());
        report.last_error = outcome.as_ref().err().map(ToString::to_string);
    }
}

/// Runs `client` on a background thread: a look at the certificate now and every 12 hours, ordering
/// when due; a failure is retried after 1 minute, doubling to 6 hours. An operator's revoke request
/// ([`AcmeControl::request_revoke`]) wakes it at once.
pub fn spawn(mut client: AcmeClient, clock: Clock) -> io::Result<(Background, AcmeControl)> {
    let (requests, incoming) = crossbeam_channel::unbounded::<Revoke>();
    let report = Arc::new(Mutex::new(AcmeReport::default()));
    client.report_into(&report, &Ok(()));
    let control = AcmeControl { requests, report: Arc::clone(&report) };
    let thread = Background::spawn("pibl-acme", move |stop| {
        let mut backoff = FIRST_BACKOFF;
        let mut revoke: Option<Revoke> = None;
        // The API's sender lives as long as pibl does; should it go, the thread stops listening to it.
        let mut incoming: Receiver<Revoke> = incoming;
        loop {
            let asked = revoke.is_some();
            let outcome = match revoke.take() {
                Some(Revoke { by }) => {
                    log::warn!("ACME: {by} asked to replace and revoke the certificate");
                    client.revoke_and_reissue(clock.wall()).map(|()| Checked::Issued)
                }
                None => client.check(clock.wall()),
            };
            let wait = match &outcome {
                Ok(checked) => {
                    if let Checked::Valid(days) = checked {
                        log::debug!("ACME: certificate valid, {days} days left");
                    }
                    backoff = FIRST_BACKOFF;
                    CHECK_EVERY
                }
                Err(e) => {
                    log::error!("ACME: {e}; next try in {}s", backoff.as_secs());
                    let wait = backoff;
                    backoff = next_backoff(backoff);
                    wait
                }
            };
            client.report_into(&report, &outcome.map(|_| ()));
            if asked {
                report.lock().revoke_requested_by = None;
            }
            select! {
                recv(incoming) -> request => match request {
                    Ok(request) => revoke = Some(request),
                    Err(_) => incoming = crossbeam_channel::never(),
                },
                recv(stop.stopped()) -> _ => return,
                default(wait) => {}
            }
        }
    })?;
    Ok((thread, control))
}

/// Whether a certificate's names are exactly `domains`, in any order.
fn same_names(names: &[String], domains: &[String]) -> bool {
    let (mut a, mut b) = (names.to_vec(), domains.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// The wait after one more failure in a row: doubled, at most [`MAX_BACKOFF`].
fn next_backoff(wait: Duration) -> Duration {
    (wait * 2).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_a_minute_to_six_hours() {
        let mut wait = FIRST_BACKOFF;
        let mut waits = vec![wait.as_secs()];
        for _ in 0..10 {
            wait = next_backoff(wait);
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600]);
    }

    #[test]
    fn private_files_are_0600_and_replace_the_old_one() {
        let dir = std::env::temp_dir().join(format!("pibl-acme-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        make_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join("a.key");
        write_private(&file, b"one").unwrap();
        write_private(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join("a.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
