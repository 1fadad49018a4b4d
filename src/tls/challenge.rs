//! HTTP-01 challenge answers (RFC 8555 §8.3): the ACME client publishes `token -> key authorization`
//! here while an order is open, and the plain port answers `GET /.well-known/acme-challenge/TOKEN`
//! from it.

use std::collections::HashMap;

use parking_lot::RwLock;

/// The path every HTTP-01 challenge is fetched under.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The tokens being validated right now; shared by the ACME thread and the data plane.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// Publishes the answer to `token` until [`Challenges::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens.write().insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens.write().remove(token);
    }

    /// The key authorization for `token`, if it is being validated.
    pub fn get(&self, token: &str) -> Option<String> {
        self.tokens.read().get(token).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.read().is_empty()
    }
}
