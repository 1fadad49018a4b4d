//! Credentials: passwords hashed with Argon2id (the `argon2` crate's default parameters, a random
//! salt each) on a small pool of hashing threads, and HS256 access tokens (`jsonwebtoken`) carrying the user's e-mail as `identity`
//! with `iat`, `nbf` and `exp`, like the seed's Flask-JWT tokens. Time comes from the caller, so
//! tests expire tokens by moving a clock.

use std::fmt;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm as HashAlgorithm, Argon2, Block, Params, Version};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's e-mail address.
    pub identity: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    /// When the account was created (ms): a token outlives no deletion, even one in the second it
    /// was issued. Tokens from before this claim (and `issue`'s) have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acct: Option<u64>,
}

/// Why a token was refused (each is a 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, a bad signature, another algorithm, or claims missing.
    Invalid(String),
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Invalid(why) => write!(f, "invalid token: {why}"),
            TokenError::Expired => f.write_str("token has expired: get a new one from POST /api/auth"),
            TokenError::NotYetValid => f.write_str("token is not valid yet"),
        }
    }
}

/// What was wrong with a token, in words for the client (the library's own messages name its types).
fn invalid(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    let why = match e.kind() {
        ErrorKind::InvalidSignature => "the signature does not match".to_string(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "it is not signed with HS256".to_string(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the claim {claim:?} is missing"),
        ErrorKind::Json(_) => "its header or claims are not what pibl issues".to_string(),
        _ => "it is not a well-formed JWT".to_string(),
    };
    TokenError::Invalid(why)
}

/// Why a password could not be hashed or checked.
#[derive(Debug)]
pub enum HashError {
    /// The random source or the hasher failed (a 500; it does not depend on the client).
    Failed(String),
    /// Every hashing thread stayed busy past [`HASH_WAIT`] or the queue is full (a 503: retry later).
    Busy,
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Failed(why) => write!(f, "password hashing failed: {why}"),
            HashError::Busy => f.write_str("too many passwords are being checked at once; retry in a moment"),
        }
    }
}

impl std::error::Error for HashError {}

fn failed(e: impl fmt::Display) -> HashError {
    HashError::Failed(e.to_string())
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], HashError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(failed)?;
    Ok(buf)
}

/// A fresh random JWT secret: 32 bytes as hex.
pub fn new_secret() -> Result<String, HashError> {
    Ok(random_bytes::<32>()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=...`), with a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    match on_pool(Task::Hash(password.to_string()))? {
        Done::Hashed(hash) => Ok(hash),
        Done::Verified(_) => Err(failed("the hashing pool answered another question")),
    }
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> Result<bool, HashError> {
    match on_pool(Task::Verify(password.to_string(), hash.to_string()))? {
        Done::Verified(ok) => Ok(ok),
        Done::Hashed(_) => Err(failed("the hashing pool answered another question")),
    }
}

/// Spends the time of one verification, so an unknown e-mail address answers as slowly as a known
/// one with a wrong password (no probing for registered addresses by timing).
pub fn verify_dummy(password: &str) -> Result<(), HashError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let hash = match DUMMY.get() {
        Some(hash) => hash,
        None => {
            let hash = hash_password("not-a-real-password")?;
            DUMMY.get_or_init(|| hash)
        }
    };
    verify_password(password, hash).map(|_| ())
}

// ------------------------------------------------------------------------------------------------
// The hashing pool. One Argon2 hash with the default parameters works in 19 MiB. Hashed on the
// threads that serve requests, a burst of logins had each thread allocate and free its own 19 MiB,
// and the allocator kept those blocks in per-thread arenas: RSS grew by hundreds of MiB and stayed.
// Here a few threads hash, each keeping one working memory for every hash it computes, so hashing
// memory is bounded by `MAX_HASHERS` working memories whatever the burst; other requests queue.
// ------------------------------------------------------------------------------------------------

/// Most hashing threads, and never more than the machine has cores: 3 x 19 MiB stays under 64 MiB.
const MAX_HASHERS: usize = 3;
/// Hashes waiting for a thread; past it a request is refused at once.
const HASH_QUEUE: usize = 64;
/// Longest a request waits for its hash, queueing included; past it [`HashError::Busy`].
pub const HASH_WAIT: Duration = Duration::from_secs(10);
/// Largest working memory a stored hash may ask for (64 MiB); a bigger `m` is refused, not allocated.
const MAX_BLOCKS: usize = 64 * 1024;

enum Task {
    Hash(String),
    /// A password and the stored hash to check it against.
    Verify(String, String),
}

enum Done {
    Hashed(String),
    Verified(bool),
}

struct Job {
    task: Task,
    /// When the caller stops waiting: a job still queued then is dropped, not computed.
    deadline: Instant,
    reply: Sender<Result<Done, HashError>>,
}

/// How many threads hash: the cores, at most [`MAX_HASHERS`].
pub fn hashing_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_HASHERS)
}

/// Hashing threads and their queue.
struct HashPool {
    jobs: Sender<Job>,
    /// How long a caller waits for its answer, queueing included.
    wait: Duration,
}

impl HashPool {
    /// Starts `threads` hashing threads behind a queue of `queue` jobs; `None` if none started.
    fn start(threads: usize, queue: usize, wait: Duration) -> Option<HashPool> {
        let (jobs, pending) = crossbeam_channel::bounded::<Job>(queue);
        let mut started = 0;
        for i in 0..threads {
            let pending = pending.clone();
            match thread::Builder::new().name(format!("pibl-hash-{i}")).spawn(move || hasher(&pending)) {
                Ok(_) => started += 1,
                Err(e) => log::error!("cannot start password hashing thread {i}: {e}"),
            }
        }
        (started > 0).then_some(HashPool { jobs, wait })
    }

    fn run(&self, task: Task) -> Result<Done, HashError> {
        let deadline = Instant::now() + self.wait;
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.jobs.try_send(Job { task, deadline, reply }).map_err(|e| match e {
            TrySendError::Full(_) => HashError::Busy,
            TrySendError::Disconnected(_) => failed("the password hashing threads are gone"),
        })?;
        // A job dropped at its deadline disconnects the reply: busy as well.
        answer.recv_deadline(deadline).map_err(|_| HashError::Busy)?
    }
}

/// Runs `task` on the process's pool, whose threads start with the first hash and live as long as
/// the process.
fn on_pool(task: Task) -> Result<Done, HashError> {
    static POOL: OnceLock<Option<HashPool>> = OnceLock::new();
    POOL.get_or_init(|| HashPool::start(hashing_threads(), HASH_QUEUE, HASH_WAIT))
        .as_ref()
        .ok_or_else(|| failed("no password hashing thread could be started"))?
        .run(task)
}

/// One hashing thread: computes queued jobs in its one reused working memory.
fn hasher(queue: &Receiver<Job>) {
    let mut memory: Vec<Block> = Vec::new();
    for job in queue.iter() {
        if Instant::now() >= job.deadline {
            continue; // its caller has stopped waiting
        }
        let done = match job.task {
            Task::Hash(password) => hash_with(&mut memory, &password).map(Done::Hashed),
            Task::Verify(password, hash) => verify_with(&mut memory, &password, &hash).map(Done::Verified),
        };
        let _ = job.reply.send(done);
    }
}

/// The first `params.block_count()` blocks of `memory`, grown (once) if it is smaller.
fn working_memory<'m>(memory: &'m mut Vec<Block>, params: &Params) -> Result<&'m mut [Block], HashError> {
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return Err(failed(format!("a hash asks for {blocks} KiB of memory, more than {MAX_BLOCKS} KiB")));
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    Ok(&mut memory[..blocks])
}

fn hash_with(memory: &mut Vec<Block>, password: &str) -> Result<String, HashError> {
    let salt_bytes = random_bytes::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(failed)?;
    let params = Params::default();
    let argon = Argon2::new(HashAlgorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon
        .hash_password_into_with_memory(password.as_bytes(), &salt_bytes, &mut out, working_memory(memory, &params)?)
        .map_err(failed)?;
    let phc = PasswordHash {
        algorithm: HashAlgorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(failed)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(failed)?),
    };
    Ok(phc.to_string())
}

/// Recomputes the stored hash's parameters over `password` and compares in constant time.
fn verify_with(memory: &mut Vec<Block>, password: &str, stored: &str) -> Result<bool, HashError> {
    let Ok(parsed) = PasswordHash::new(stored) else { return Ok(false) };
    let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) =
        (HashAlgorithm::try_from(parsed.algorithm), Params::try_from(&parsed), parsed.hash, parsed.salt)
    else {
        return Ok(false);
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return Ok(false),
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else { return Ok(false) };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, working_memory(memory, &params)?)
        .is_err()
    {
        return Ok(false);
    }
    // `Output`'s equality is constant-time.
    Ok(Output::new(&out).is_ok_and(|computed| computed == expected))
}

/// Issues and checks HS256 access tokens with one secret.
/// The token of an `Authorization` value in the seed's `JWT <token>` scheme or the usual
/// `Bearer <token>`.
pub fn token_from_header(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    ((scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer")) && !token.is_empty())
        .then_some(token)
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Tokens {
        // Chosen explicitly, so another crate enabling a second backend cannot make it ambiguous.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs: ttl_secs.max(1),
        }
    }

    /// A token for `identity`, valid from `now_secs` for the configured lifetime.
    pub fn issue(&self, identity: &str, now_secs: u64) -> Result<String, TokenError> {
        self.sign(identity, None, now_secs)
    }

    /// A token for the account `identity` created at `account_ms`, which no later account of that
    /// address accepts.
    pub fn issue_for(&self, identity: &str, account_ms: u64, now_secs: u64) -> Result<String, TokenError> {
        self.sign(identity, Some(account_ms), now_secs)
    }

    fn sign(&self, identity: &str, acct: Option<u64>, now_secs: u64) -> Result<String, TokenError> {
        let claims = Claims {
            identity: identity.to_string(),
            iat: now_secs,
            nbf: now_secs,
            exp: now_secs + self.ttl_secs,
            acct,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature, algorithm and claims, then `nbf` and `exp` against `now_secs`.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked below against the caller's clock, not the library's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iat"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| invalid(&e))?;
        let claims = data.claims;
        if now_secs >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now_secs < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        // Signed with the real key but for longer than pibl ever issues: not one of ours to honour
        // (a leaked key, or a token minted by hand), and no token lives past `jwt_ttl` from now.
        if claims.exp > now_secs.saturating_add(self.ttl_secs) || claims.exp.saturating_sub(claims.iat) > self.ttl_secs
        {
            return Err(TokenError::Invalid("it lives longer than jwt_ttl allows".into()));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("secret1").unwrap();
        let b = hash_password("secret1").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("secret1"));
        assert!(verify_password("secret1", &a).unwrap());
        assert!(!verify_password("secret2", &a).unwrap());
        assert!(!verify_password("secret1", "not a hash").unwrap());
        verify_dummy("anything").unwrap();
    }

    #[test]
    fn pool_hashes_are_the_library_s_hashes() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Ours verify with the library's verifier, and the library's verify with ours.
        let ours = hash_password("pässword").unwrap();
        assert!(Argon2::default().verify_password("pässword".as_bytes(), &PasswordHash::new(&ours).unwrap()).is_ok());
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default().hash_password(b"other", &salt).unwrap().to_string();
        assert!(verify_password("other", &theirs).unwrap());
        assert!(!verify_password("Other", &theirs).unwrap());
        // Other parameters (smaller memory, Argon2i) are read from the stored hash.
        let small = Params::new(1024, 1, 1, None).unwrap();
        let argon2i = Argon2::new(HashAlgorithm::Argon2i, Version::V0x13, small).hash_password(b"pw", &salt).unwrap();
        assert!(verify_password("pw", &argon2i.to_string()).unwrap());
        // A hash asking for more memory than allowed is an error, not an allocation.
        let huge =
            "$argon2id$v=19$m=4194304,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(verify_password("pw", huge), Err(HashError::Failed(_))));
        assert!(hashing_threads() >= 1 && hashing_threads() <= MAX_HASHERS);
    }

    #[test]
    fn a_full_or_slow_queue_is_busy_not_a_pile_up() {
        // A queue of one that no thread takes from: the first job waits out its time (Busy), then
        // holds the only place, so the next is refused at once (Busy).
        let (jobs, _pending) = crossbeam_channel::bounded(1);
        let pool = HashPool { jobs, wait: Duration::from_millis(20) };
        assert!(matches!(pool.run(Task::Hash("pw".into())), Err(HashError::Busy)));
        assert!(matches!(pool.run(Task::Hash("pw".into())), Err(HashError::Busy)));
        // With a thread behind it, the same pool shape answers.
        let pool = HashPool::start(1, 1, Duration::from_secs(30)).unwrap();
        assert!(matches!(pool.run(Task::Hash("pw".into())), Ok(Done::Hashed(_))));
    }

    #[test]
    fn tokens_expire_and_reject_forgeries() {
        let tokens = Tokens::new(b"k1", 300);
        let t = tokens.issue("a@b.io", 1_000).unwrap();
        let claims = tokens.verify(&t, 1_000).unwrap();
        assert_eq!((claims.identity.as_str(), claims.iat, claims.nbf, claims.exp), ("a@b.io", 1000, 1000, 1300));
        assert_eq!(tokens.verify(&t, 1_299).map(|c| c.exp), Ok(1300));
        assert_eq!(tokens.verify(&t, 1_300), Err(TokenError::Expired));
        assert_eq!(tokens.verify(&t, 999), Err(TokenError::NotYetValid));
        let other = Tokens::new(b"k2", 300);
        assert!(matches!(other.verify(&t, 1_000), Err(TokenError::Invalid(_))));
        assert!(matches!(tokens.verify("abc.def.ghi", 1_000), Err(TokenError::Invalid(_))));
        // The seed's example token (another secret) is refused.
        // Signed with the real key but living longer than jwt_ttl.
        let long =
            Claims { identity: "a@b.io".into(), iat: 1_000, nbf: 1_000, exp: 1_000 + 10 * 365 * 86_400, acct: None };
        let long =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &long, &EncodingKey::from_secret(b"k1")).unwrap();
        assert_eq!(tokens.verify(&long, 1_000), Err(TokenError::Invalid("it lives longer than jwt_ttl allows".into())));
        // The reasons name no library type.
        assert_eq!(other.verify(&t, 1_000), Err(TokenError::Invalid("the signature does not match".into())));
        assert_eq!(
            tokens.verify("abc.def.ghi", 1_000),
            Err(TokenError::Invalid("its header or claims are not what pibl issues".into()))
        );
        assert_eq!(tokens.verify("abc", 1_000), Err(TokenError::Invalid("it is not a well-formed JWT".into())));
        let acct = tokens.issue_for("a@b.io", 1_000_500, 1_000).unwrap();
        assert_eq!(tokens.verify(&acct, 1_000).unwrap().acct, Some(1_000_500));
        let seed = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZGVudGl0eSI6ImFuZ2VsQGFuZ2VsLmNvbSIsImlhdCI6MTQ2MzkxNTE1MCwibmJmIjoxNDYzOTE1MTUwLCJleHAiOjE0NjM5MTU0NTB9.5NXV8LxNFUUU1MbPxRa-tLsGU-i23G0BviIM7vX_ed4";
        assert!(matches!(tokens.verify(seed, 1_463_915_200), Err(TokenError::Invalid(_))));
        // alg "none" with the same claims is refused.
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(matches!(tokens.verify(&none, 1_000), Err(TokenError::Invalid(_))));
    }
}
