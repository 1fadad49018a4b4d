//! The INI loader (`pibl::Config::from_ini_str`) and its writer (`Config::to_ini`): every key of
//! `[DEFAULT]`, `[route.NAME]` sections, `ip_serverN`, durations, sizes, addresses, CIDR lists.
//! Host names never reach DNS here (see `pibl_fuzz::no_dns`); IP literals load as usual.
//!
//! Properties:
//! - a loaded configuration respects every documented bound (threads, connections, buffer and head
//!   sizes, `max_headers` within the parser's capacity, durations within a year, timeouts above 0,
//!   object size within cache size, at least one backend, loopback-only metrics);
//! - written back with `to_ini`, it loads to an equal configuration, and writing that again gives
//!   the same text (a fixed point);
//! - a rejected file names the file in its message, and loading is deterministic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pibl::config::THREADS_AUTO;
use pibl::http::request::HEADER_CAPACITY;
use pibl::Config;

pibl_fuzz::no_dns!();

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn check_bounds(c: &Config) {
    // `threads = auto` is kept as such (and written back as `auto`); what starts is a count.
    assert!(c.threads == THREADS_AUTO || (1..=1024).contains(&c.threads), "threads {}", c.threads);
    assert!(c.thread_count() >= 1, "{} threads start", c.thread_count());
    assert!((1..=1_000_000).contains(&c.max_conn));
    assert!((1024..=1 << 20).contains(&c.buffer_size));
    assert!((1024..=1 << 20).contains(&c.max_header_bytes));
    assert!((1..=HEADER_CAPACITY).contains(&c.max_headers), "max_headers {} past the parser's capacity", c.max_headers);
    assert!(c.port != 0 && c.api_port != 0);
    assert!(!c.backends.is_empty());
    assert!(c.cache_max_object_bytes <= c.cache_max_bytes);
    for (name, d) in [
        ("header_timeout", c.header_timeout),
        ("keepalive_timeout", c.keepalive_timeout),
        ("client_timeout", c.client_timeout),
        ("connect_timeout", c.connect_timeout),
        ("backend_timeout", c.backend_timeout),
    ] {
        assert!(!d.is_zero() && d <= YEAR, "{name} = {d:?}");
    }
    for d in
        [c.ttl, c.backend_cooldown, c.shutdown_grace, c.jwt_ttl, c.lockout_secs, c.health_interval, c.purge_interval]
    {
        assert!(d <= YEAR, "{d:?} is longer than a year");
    }
    if let Some(addr) = c.metrics_bind {
        assert!(addr.ip().is_loopback());
    }
    if let Some(rate) = c.rate_limit {
        assert!(rate.per_second.is_finite() && rate.per_second > 0.0);
    }
    for route in &c.routes {
        assert!(route.prefix.starts_with('/') && !route.servers.is_empty());
        assert!(route.auth_cache <= YEAR);
        if let Some(rate) = route.rate_limit {
            assert!(rate.per_second.is_finite() && rate.per_second > 0.0);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let loaded = Config::from_ini_str(&text, "fuzz.ini");
    match &loaded {
        Ok(config) => {
            check_bounds(config);
            let written = config.to_ini();
            match Config::from_ini_str(&written, "again.ini") {
                Ok(again) => {
                    assert_eq!(&again, config, "to_ini output loads to a different configuration:\n{written}");
                    assert_eq!(again.to_ini(), written, "to_ini is not a fixed point");
                }
                Err(e) => panic!("to_ini output does not load: {e}\n{written}"),
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.ini:"), "{e}");
            assert_eq!(Config::from_ini_str(&text, "fuzz.ini").as_ref().err(), Some(e));
        }
    }
});
