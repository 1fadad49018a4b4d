//! pibl — a reverse proxy and load balancer (*proxy inverso con balanceador de carga*).
//!
//! The library holds all the logic; the `proxy` and `parser` binaries only wire it together. The
//! folders are the planes (the README's architecture section draws them and a request's path):
//! the data plane is `server` → `proxy` → `cache` / `gateway` / `upstream` over `http`; the
//! management plane is `api` over `store`; `observe` watches both; `config` and `clock` feed all.

pub mod api; // management HTTP API: its listener, endpoints, JSON checks, status pages
pub mod background; // named background threads: started, asked to stop, joined
pub mod cache; // in-memory response cache: storage, eviction, coalescing, RFC 9111 policy
pub mod clock; // the one clock, made at start-up and passed in; tests advance it
pub mod config; // parser.ini: keys, scanning, typed values, `[route.NAME]` sections
pub mod gateway; // API gateway: path routes, access rules, rate limits, auth sub-requests
pub mod http; // HTTP/1.x wire format: heads, bodies, buffers, token lists
pub mod observe; // metrics, access log, process log
pub mod proxy; // one request's way: admit, route, cache step, forward, relay, log
pub mod runtime; // starts and stops everything `proxy` runs, as one
pub mod server; // data plane: event loops, connections, reload, shutdown
pub mod store; // management state in SQLite or PostgreSQL: users, credentials, admins, lock-out, app logs
pub mod tls; // HTTPS: PEM certificates, SNI store, rustls configs, ACME, the plain port's redirects
pub mod upstream; // backends and pools, balancing, health checks, app routing table

pub use config::Config;
pub use runtime::Pibl;
pub use server::Server;
