//! pibl — a reverse proxy and load balancer (*proxy inverso con balanceador de carga*).
//!
//! The library holds all the logic; the `proxy` and `parser` binaries only wire it together.
//! See the README's architecture section for how the modules fit.

pub mod access_log;
pub mod api;
pub mod applog;
pub mod auth;
pub mod auth_request;
pub mod backend;
pub mod buffer;
pub mod cache;
pub mod clock;
pub mod config;
pub mod conn;
pub mod demo;
pub mod gateway;
pub mod health;
pub mod http;
pub mod lockout;
pub mod logging;
pub mod metrics;
pub mod offset_clock;
pub mod parker;
pub mod proxy;
pub mod proxy_cache;
pub mod ratelimit;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod store;

pub use config::Config;
pub use runtime::Pibl;
pub use server::Server;
