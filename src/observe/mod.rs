//! What pibl tells its operators: request metrics for `/metrics` and the dashboard ([`metrics`]),
//! one access-log record per request ([`access_log`]), and the process log ([`logging`]).

pub mod access_log;
pub mod logging;
pub mod metrics;
