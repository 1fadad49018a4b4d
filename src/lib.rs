//! pibl — a reverse proxy and load balancer (*proxy inverso con balanceador de carga*).
//!
//! The library holds all the logic; the `proxy` and `parser` binaries only wire it together.
//! See the README's architecture section for how the modules fit.

pub mod backend;
pub mod buffer;
pub mod clock;
pub mod config;
pub mod conn;
pub mod demo;
pub mod http;
pub mod logging;
pub mod parker;
pub mod proxy;
pub mod server;

pub use config::Config;
pub use server::Server;
