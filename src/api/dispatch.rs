//! Dispatch of the management API: a request's method and path to its endpoint ([`ENDPOINTS`] lists
//! them all), the throttle on the credential endpoints, and the answer to a failure. The endpoints
//! live by concern: `users`, `apps`, `admin`, `tls`, `status`. Every answer is JSON (but for the spec, the
//! metrics and the dashboard); every error is `{"error": "...", "details": [...]}` ([`ApiError`]).

use std::net::IpAddr;

use super::reply::{ApiError, ApiResult, Reply};
use super::state::ApiState;
// A `use` per sibling: the layout check (tests/layout.rs) reads `super::{...}` as a use of the parent.
use super::admin;
use super::apps;
use super::auth;
use super::status;
use super::tls;
use super::users;
use crate::http::request::Request;

/// Every (method, path template) that [`handle`] answers, as `docs/openapi.yaml` writes them. The
/// spec is tested against this table (`tests/openapi.rs`), and the dispatch against it (the unit
/// test `endpoints_table_matches_the_dispatch`): a new endpoint goes into `dispatch`, this table and
/// the spec.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/api/users"),
    ("DELETE", "/api/users"),
    ("POST", "/api/auth"),
    ("GET", "/api/apps"),
    ("GET", "/api/apps/{appid}"),
    ("POST", "/api/apps/{appid}"),
    ("DELETE", "/api/apps/{appid}"),
    ("DELETE", "/api/apps/{appid}/endpoints/{endpoint_id}"),
    ("GET", "/api/apps/{appid}/logs"),
    ("GET", "/api/blocked"),
    ("DELETE", "/api/blocked/{email}"),
    ("DELETE", "/api/cache"),
    ("GET", "/api/tls"),
    ("POST", "/api/tls/revoke"),
    ("GET", "/api/status"),
    ("GET", "/api/openapi.yaml"),
    ("GET", "/metrics"),
    ("GET", "/dashboard"),
];

/// The API's description, served at `GET /api/openapi.yaml`; embedded so the binary needs no file.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// Answers one request.
pub fn handle(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> Reply {
    match dispatch(state, req, body, client) {
        Ok(reply) => reply,
        Err(e) => {
            if e.status() == 401 {
                state.observe.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            e.reply()
        }
    }
}

/// Dispatches on method and path segments. Every arm here has its rows in [`ENDPOINTS`].
fn dispatch(state: &ApiState, req: &Request, body: &[u8], client: IpAddr) -> ApiResult<Reply> {
    let (path, query) = match req.target().split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target(), ""),
    };
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method();
    let wrong = |allow: &'static str| Err(ApiError::MethodNotAllowed(allow));
    match segments.as_slice() {
        ["api", "users"] => {
            throttle(state, client)?;
            match method {
                "POST" => users::register(state, req, body),
                "DELETE" => users::unregister(state, req, body, client),
                _ => wrong("POST, DELETE"),
            }
        }
        ["api", "auth"] => {
            throttle(state, client)?;
            match method {
                "POST" => users::login(state, req, body, client),
                _ => wrong("POST"),
            }
        }
        ["api", "apps"] => match method {
            "GET" => apps::list_apps(state, req),
            _ => wrong("GET"),
        },
        ["api", "apps", id] => match method {
            "GET" => apps::show_app(state, req, id),
            "POST" => apps::add_endpoint(state, req, body, id),
            "DELETE" => apps::delete_app(state, req, id),
            _ => wrong("GET, POST, DELETE"),
        },
        ["api", "apps", id, "endpoints", endpoint] => match method {
            "DELETE" => apps::delete_endpoint(state, req, id, endpoint),
            _ => wrong("DELETE"),
        },
        ["api", "apps", id, "logs"] => match method {
            "GET" => apps::app_logs(state, req, id, query),
            _ => wrong("GET"),
        },
        ["api", "cache"] => match method {
            "DELETE" => admin::purge_cache(state, req, query),
            _ => wrong("DELETE"),
        },
        ["api", "blocked"] => match method {
            "GET" => admin::blocked(state, req),
            _ => wrong("GET"),
        },
        ["api", "blocked", email] => match method {
            "DELETE" => admin::unblock(state, req, email),
            _ => wrong("DELETE"),
        },
        ["api", "tls"] => match method {
            "GET" => tls::show(state, req),
            _ => wrong("GET"),
        },
        ["api", "tls", "revoke"] => match method {
            "POST" => tls::revoke(state, req),
            _ => wrong("POST"),
        },
        ["metrics"] => match method {
            "GET" => status::metrics_on_api(state, req),
            _ => wrong("GET"),
        },
        ["dashboard"] => match method {
            "GET" => Ok(status::dashboard()),
            _ => wrong("GET"),
        },
        ["api", "status"] => match method {
            "GET" => status::status(state, &auth::authenticate(state, req)?),
            _ => wrong("GET"),
        },
        // No auth: the description of the API is public, like the docs.
        ["api", "openapi.yaml"] => match method {
            "GET" => Ok(Reply::document("application/yaml", OPENAPI_YAML)),
            _ => wrong("GET"),
        },
        _ => {
            Err(ApiError::NotFound(format!("no such API endpoint: {path} (see docs/api.md or GET /api/openapi.yaml)")))
        }
    }
}

/// Spends one of `client`'s attempts at the credential endpoints.
fn throttle(state: &ApiState, client: IpAddr) -> ApiResult<()> {
    state.throttle.check(client, state.clock.now()).map_err(|retry_after| ApiError::Throttled { retry_after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::throttle::Throttle;
    use crate::clock::Clock;
    use crate::http::request::{self, Limits};
    use crate::store::credentials::Tokens;
    use crate::store::{self, Store};
    use crate::upstream::apps::Router;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// An API state over a fresh database in the temp dir, with no throttle; the file goes on drop.
    struct TestState(ApiState, std::path::PathBuf);

    impl TestState {
        fn new(name: &str) -> TestState {
            let path = std::env::temp_dir().join(format!("pibl-unit-{}-{name}.db", std::process::id()));
            let store = Arc::new(Store::open(&path, store::Durability::Normal, 100).expect("open store"));
            let state = ApiState {
                store,
                tokens: Arc::new(Tokens::new(b"unit-test-secret", 300)),
                router: Arc::new(Router::new(4, Clock::system())),
                lockout: crossbeam_channel::unbounded().0,
                throttle: Throttle::new(0),
                clock: Clock::system(),
                admins: Vec::new(),
                access_log: false,
                metrics_need_token: false,
                reserved_app_ids: Vec::new(),
                lockout_per_ip: false,
                cache: None,
                certificates: None,
                acme: None,
                observe: Default::default(),
            };
            TestState(state, path)
        }
    }

    impl Drop for TestState {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.1.display()));
            }
        }
    }

    /// `method path` without a token, as the dispatch sees it.
    fn call(state: &ApiState, method: &str, path: &str) -> Reply {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: 1024 };
        let (req, _) = request::parse(head.as_bytes(), &limits).expect("valid head").expect("complete head");
        handle(state, &req, b"", IpAddr::from([127, 0, 0, 1]))
    }

    /// A concrete path for a template: each `{parameter}` filled with a valid value.
    fn concrete(template: &str) -> String {
        template.replace("{appid}", "helloworld").replace("{endpoint_id}", "1").replace("{email}", "a%40b.io")
    }

    #[test]
    fn endpoints_table_matches_the_dispatch() {
        let state = TestState::new("endpoints");
        let templates: BTreeSet<&str> = ENDPOINTS.iter().map(|(_, t)| *t).collect();
        for template in &templates {
            let path = concrete(template);
            let listed: BTreeSet<&str> = ENDPOINTS.iter().filter(|(_, t)| t == template).map(|(m, _)| *m).collect();
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
                let reply = call(&state.0, method, &path);
                if listed.contains(method) {
                    // Without a token or body the endpoint refuses (401, 415...) but never as "no
                    // such path" (404) or "wrong method" (405): those only come from the dispatch here.
                    assert!(![404, 405].contains(&reply.status), "{method} {path}: {} {}", reply.status, reply.body);
                } else {
                    assert_eq!(reply.status, 405, "{method} {path} should be refused: {}", reply.body);
                    let allow: BTreeSet<&str> = reply.headers[0].1.split(", ").collect();
                    assert_eq!(allow, listed, "Allow of {path}");
                }
            }
        }
        // Paths outside the table are not dispatched.
        for path in ["/api", "/api/apps/x/y", "/api/apps/x/endpoints", "/api/openapi.json", "/metrics/x"] {
            assert_eq!(call(&state.0, "GET", path).status, 404, "{path}");
        }
        // A coarse tripwire against an arm added to `dispatch` but not to ENDPOINTS: `dispatch`'s
        // slice patterns (`["api", ...] =>`) are as many as the table's distinct templates.
        let source = include_str!("dispatch.rs");
        let body = source.split("fn dispatch(").nth(1).and_then(|s| s.split("\nfn throttle(").next()).unwrap_or("");
        let arms = body.lines().filter(|l| l.trim_start().starts_with("[\"") && l.contains("=>")).count();
        assert_eq!(arms, templates.len(), "dispatch has {arms} path arms, ENDPOINTS {} templates", templates.len());
    }

    #[test]
    fn openapi_is_served_as_yaml_without_auth() {
        let state = TestState::new("openapi");
        let reply = call(&state.0, "GET", "/api/openapi.yaml");
        assert_eq!((reply.status, reply.raw), (200, Some(("application/yaml", OPENAPI_YAML.as_bytes().to_vec()))));
        assert!(OPENAPI_YAML.starts_with("openapi: 3.1"), "the embedded file is the spec");
    }
}
