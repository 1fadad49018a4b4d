//! `/metrics` and `/api/status` after real traffic through a running pibl: counters by route and
//! status class, cache hits, upstream timings, rate-limit rejections, a backend that went down,
//! failed logins and a blocked account; and who may see what in the status.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use pibl::clock::Clock;
use pibl::Config;
use serde_json::Value;

fn cached_backend(body: &'static str) -> TestBackend {
    TestBackend::start(move |_| {
        Reply::Raw(
            format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_bytes(),
        )
    })
}

fn scrape(api: std::net::SocketAddr) -> String {
    let res = get(api, "/metrics");
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    res.text()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn metrics_and_status_follow_real_traffic() {
    let alpha = cached_backend("alpha");
    let beta = TestBackend::named("beta");
    let db = TempDb::new("metrics");
    let ini = format!(
        "[route.tight]\nprefix = /tight/\nservers = {a}\nrate_limit = 1/m\n[route.beta]\nprefix = /beta/\nservers = {b}\n",
        a = alpha.addr,
        b = beta.addr
    );
    let routes = Config::from_ini_str(&ini, "t.ini").expect("routes").routes;
    let config = Config { ttl: Duration::from_secs(600), routes, ..api_config(&[alpha.addr], &db) };
    let pibl = start_pibl(config, Clock::system());
    let (proxy, api_addr) = (pibl.proxy_addr(), pibl.api_addr());

    let before = scrape(api_addr);
    assert!(has_line(&before, "pibl_requests_total{route=\"tight\",code_class=\"2xx\"} 0"), "{before}");
    assert!(has_line(&before, "# TYPE pibl_request_duration_seconds histogram"));

    for _ in 0..3 {
        assert_eq!(get(proxy, "/page").text(), "alpha");
    }
    assert_eq!(get(proxy, "/tight/a").status, 200);
    assert_eq!(get(proxy, "/tight/b").status, 429);
    assert_eq!(get(proxy, "/beta/x").text(), "beta");
    let beta_addr = beta.addr;
    beta.stop();
    assert_eq!(get(proxy, "/beta/x").status, 502);

    // A request is counted just after its answer is sent.
    let counted = "pibl_requests_total{route=\"beta\",code_class=\"5xx\"} 1";
    wait_until("the last request is counted", || has_line(&scrape(api_addr), counted));
    let text = scrape(api_addr);
    let a = alpha.addr;
    for line in [
        "pibl_requests_total{route=\"default\",code_class=\"2xx\"} 3".to_string(),
        "pibl_requests_total{route=\"tight\",code_class=\"2xx\"} 1".into(),
        "pibl_requests_total{route=\"tight\",code_class=\"4xx\"} 1".into(),
        "pibl_requests_total{route=\"beta\",code_class=\"5xx\"} 1".into(),
        "pibl_rejections_total{route=\"tight\",reason=\"rate_limit\"} 1".into(),
        "pibl_request_duration_seconds_count{route=\"default\"} 3".into(),
        "pibl_cache_hits_total 2".into(),
        "pibl_cache_objects 2".into(),
        format!("pibl_upstream_response_seconds_count{{backend=\"{a}\"}} 2"),
        format!("pibl_backend_up{{pool=\"default\",backend=\"{a}\"}} 1"),
        format!("pibl_backend_up{{pool=\"beta\",backend=\"{beta_addr}\"}} 0"),
        format!("pibl_backend_in_flight{{pool=\"default\",backend=\"{a}\"}} 0"),
        "pibl_locked_accounts 0".into(),
    ] {
        assert!(has_line(&text, &line), "missing {line:?} in:\n{text}");
    }
    let connects = format!("pibl_upstream_connect_seconds_count{{backend=\"{a}\"}} ");
    assert!(text.lines().any(|l| l.starts_with(&connects) && !l.ends_with(" 0")), "{text}");
    // Failed logins count as auth failures; five in a row block the account.
    let _user = register_and_login(api_addr, "eve@pibl.test");
    for _ in 0..5 {
        let res = api(
            api_addr,
            "POST",
            "/api/auth",
            None,
            Some(r#"{"email":"eve@pibl.test","password":"not-the-password"}"#),
        );
        assert_eq!(res.status, 401);
    }
    wait_until("the account is blocked", || has_line(&scrape(api_addr), "pibl_locked_accounts 1"));
    assert!(has_line(&scrape(api_addr), "pibl_auth_failures_total{source=\"api\"} 5"));

    // The status: admins see every pool, the cache and blocked accounts.
    assert_eq!(api(api_addr, "GET", "/api/status", None, None).status, 401);
    let admin = admin_login(&pibl);
    let res = api(api_addr, "GET", "/api/status", Some(&admin), None);
    assert_eq!(res.status, 200, "{}", res.text());
    let status = res.json();
    let backend = |pool: &str| {
        status["backends"].as_array().unwrap().iter().find(|b| b["pool"] == pool).cloned().unwrap_or(Value::Null)
    };
    assert_eq!(backend("beta")["healthy"], false, "{status:#}");
    assert_eq!(backend("default")["healthy"], true);
    assert_eq!(backend("default")["in_flight"], 0);
    assert_eq!(status["admin"], true);
    assert_eq!(status["rejections"]["rate_limited"], 1);
    assert_eq!(status["blocked"], serde_json::json!(["eve@pibl.test"]));
    assert_eq!(status["cache"]["objects"], 2);
    assert!(status["cache"]["hit_ratio"].as_f64().is_some_and(|r| r > 0.0), "{status:#}");
    let keys: Vec<&str> =
        status["cache"]["top_keys"].as_array().unwrap().iter().filter_map(|k| k["key"].as_str()).collect();
    assert!(keys.iter().any(|k| k.ends_with(" /page")), "{keys:?}");
    let series = status["traffic"]["series"].as_array().unwrap();
    assert_eq!(series.len(), 30);
    let total: f64 = series.iter().filter_map(|p| p["rate"].as_f64()).sum::<f64>() * 10.0;
    assert_eq!(total.round() as u64, 7, "{series:?}");
    assert!(status["traffic"]["p99_ms"].as_f64().is_some());

    // A user sees only the pools and routes of their own apps, and no cache or blocked accounts.
    let user = register_and_login(api_addr, "user@pibl.test");
    let res = api(api_addr, "POST", "/api/apps/shop", Some(&user), Some(&endpoint_body(alpha.addr, "/")));
    assert!(res.status == 200 || res.status == 201, "{}", res.text());
    let mut client = Client::connect(proxy);
    wait_until("the app routes", || client.get("/shop/x").status == 200);
    let status_of_user = || api(api_addr, "GET", "/api/status", Some(&user), None).json();
    wait_until("the app's requests are counted", || !status_of_user()["routes"].as_array().unwrap().is_empty());
    let mine = status_of_user();
    let pools: Vec<&str> = mine["backends"].as_array().unwrap().iter().filter_map(|b| b["pool"].as_str()).collect();
    assert_eq!(pools, ["shop"], "{mine:#}");
    let routes: Vec<&str> = mine["routes"].as_array().unwrap().iter().filter_map(|r| r["route"].as_str()).collect();
    assert_eq!(routes, ["shop"]);
    assert_eq!(mine["cache"], Value::Null);
    assert_eq!(mine["blocked"], Value::Null);
    assert!(scrape(api_addr).contains("pibl_requests_total{route=\"shop\",code_class=\"2xx\"} "));

    assert!(pibl.shutdown());
}

#[test]
fn dashboard_is_one_self_contained_page() {
    let db = TempDb::new("dashboard");
    let pibl = start_pibl(api_config(&[], &db), Clock::system());
    let res = get(pibl.api_addr(), "/dashboard");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(res.header("content-security-policy").is_some_and(|csp| csp.starts_with("default-src 'none'")));
    let page = res.text();
    assert!(page.contains("/api/status") && page.contains("/api/auth") && page.contains("sessionStorage"));
    // Nothing is fetched from elsewhere: no external scripts, styles or fonts.
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "external resource");
    assert!(pibl.shutdown());
}

#[test]
fn metrics_bind_moves_metrics_to_a_loopback_listener() {
    let db = TempDb::new("metrics-bind");
    let config = Config { metrics_bind: Some("127.0.0.1:0".parse().unwrap()), ..api_config(&[], &db) };
    let pibl = start_pibl(config, Clock::system());
    let metrics = pibl.metrics_addr().expect("a metrics listener");
    assert!(scrape(metrics).contains("pibl_build_info{version="));
    assert_eq!(get(metrics, "/api/status").status, 404, "the metrics port serves nothing else");
    assert_eq!(get(pibl.api_addr(), "/metrics").status, 404, "and the API port no longer serves /metrics");
    assert!(pibl.shutdown());
}
