//! Where requests go: backend servers and their pools ([`backend`]), the app table the management
//! API keeps ([`apps`]), the addresses its endpoints may point at ([`policy`]), and the active health
//! checks that mark both up or down ([`health`]).

pub mod apps;
pub mod backend;
pub mod health;
pub mod policy;
pub mod sync;
