//! The steps of the request pipeline the event loops ([`crate::server::event_loop`]) run for each
//! parsed request, each a module that knows nothing of the loops' sockets:
//!
//! ```text
//! admit ─► cache_step (lookup, store) ─► forward (upstream head) ─► response_head ─► access log, metrics
//!   └ refused        └ stored answer         └ backend failed: error (whose fault)
//! ```
//!
//! `dispatch` says where a request goes, `error` whose fault a failure is, and `refresh` is the
//! cache's background refresher thread.

pub mod admit;
pub mod cache_step;
pub mod dispatch;
pub mod error;
pub mod forward;
pub mod refresh;
pub mod response_head;
