//! Where requests go: backend servers and their pools ([`backend`]), the app table the management
//! API keeps ([`apps`]), and the active health checks that mark both up or down ([`health`]).

pub mod apps;
pub mod backend;
pub mod health;
pub mod sync;
