//! Credentials: passwords hashed with Argon2id (the `argon2` crate's default parameters, a random
//! salt each), and HS256 access tokens (`jsonwebtoken`) carrying the user's e-mail as `identity`
//! with `iat`, `nbf` and `exp`, like the seed's Flask-JWT tokens. Time comes from the caller, so
//! tests expire tokens by moving a clock.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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

/// Why a password could not be hashed (a 500; it does not depend on the client).
#[derive(Debug)]
pub struct HashError(String);

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "password hashing failed: {}", self.0)
    }
}

impl std::error::Error for HashError {}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], HashError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| HashError(e.to_string()))?;
    Ok(buf)
}

/// A fresh random JWT secret: 32 bytes as hex.
pub fn new_secret() -> Result<String, HashError> {
    Ok(random_bytes::<32>()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=...`), with a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends the time of one verification, so an unknown e-mail address answers as slowly as a known
/// one with a wrong password (no probing for registered addresses by timing).
pub fn verify_dummy(password: &str) {
    use std::sync::OnceLock;
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(hash) = DUMMY.get_or_init(|| hash_password("not-a-real-password").ok()) {
        let _ = verify_password(password, hash);
    }
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
        assert!(verify_password("secret1", &a));
        assert!(!verify_password("secret2", &a));
        assert!(!verify_password("secret1", "not a hash"));
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
