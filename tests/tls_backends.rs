//! `https://` backends: TLS with SNI (none for an address), certificates checked
//! against `backend_ca`, refused when they do not verify and accepted with `backend_tls_verify =
//! off`, pooled TLS connections reused, a large answer relayed, a WebSocket tunnel to a `wss`
//! backend, health checks over TLS, and stale entries refreshed in the background over TLS.

mod common;
mod tls_common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{get, start_proxy, test_config, Client, TempDir};
use pibl::config::{BackendAddr, Config};
use pibl::tls::client::{backend_client_config, BackendTrust};
use pibl::tls::pem::load_pair;
use pibl::tls::server::server_config;
use pibl::tls::store::{CertSet, CertStore};
use pibl::upstream::health::probe_tls;
use tls_common::{big_body, tls_ws_backend, TestCa, TlsBackend};

/// The server configuration of a backend whose certificate (from `ca`) names `backend.test` and
/// 127.0.0.1.
fn backend_config(dir: &TempDir, ca: &TestCa) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.leaf(&["backend.test", "127.0.0.1"]).write(&dir.0, "backend");
    let mut set = CertSet::default();
    set.insert(load_pair(&cert, &key, SystemTime::now()).expect("backend pair"), &[]);
    server_config(Arc::new(CertStore::new(set))).expect("server config")
}

fn tls_backend(dir: &TempDir, ca: &TestCa) -> TlsBackend {
    TlsBackend::start(backend_config(dir, ca))
}

/// A server with `backend` as its one `ip_server1`.
fn loops_with(backend: BackendAddr, adjust: impl FnOnce(&mut Config)) -> pibl::Server {
    let mut config = Config { backends: vec![backend], ..test_config(&[]) };
    adjust(&mut config);
    start_proxy(config)
}

/// `https://backend.test:PORT`, reached at 127.0.0.1 (no resolver involved).
fn by_name(backend: &TlsBackend) -> BackendAddr {
    BackendAddr { name: format!("backend.test:{}", backend.addr.port()), addr: backend.addr, tls: true }
}

#[test]
fn https_backends_are_reached_over_tls_with_sni_and_verified_against_backend_ca() {
    let dir = TempDir::new("tls-backends");
    let ca = TestCa::new("backend CA");
    let backend = tls_backend(&dir, &ca);
    let ca_file = dir.file("ca.pem", &ca.pem);
    let proxy = loops_with(by_name(&backend), |c| c.backend_ca = ca_file.clone());

    let mut client = Client::connect(proxy.local_addr());
    for i in 0..4 {
        let r = client.get(&format!("/r{i}"));
        assert_eq!((r.status, r.text()), (200, format!("tls backend /r{i}")));
    }
    assert_eq!(*backend.names.lock().unwrap(), [Some("backend.test".to_string())], "SNI is the host name");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "the TLS connection is pooled and reused");
    let r = client.get("/big");
    assert_eq!(r.status, 200);
    assert!(r.body == big_body(), "a large answer over TLS changed on the way");

    // An address: no SNI, the certificate is checked against the IP address it names.
    let by_ip = BackendAddr::parse(&format!("https://{}", backend.addr)).unwrap();
    let proxy = loops_with(by_ip, |c| c.backend_ca = ca_file.clone());
    assert_eq!(get(proxy.local_addr(), "/ip").text(), "tls backend /ip");
    assert_eq!(backend.names.lock().unwrap().last(), Some(&None), "no SNI for an address");
}

#[test]
fn a_backend_tls_connection_pibl_is_done_with_ends_with_close_notify() {
    let dir = TempDir::new("tls-backends-close-notify");
    let ca = TestCa::new("backend CA");
    let backend = tls_backend(&dir, &ca);
    let ca_file = dir.file("ca.pem", &ca.pem);
    // No pool: each backend connection is dropped once its answer is relayed.
    let proxy = loops_with(by_name(&backend), |c| {
        c.backend_ca = ca_file.clone();
        c.backend_pool_size = 0;
    });
    for i in 0..3 {
        assert_eq!(get(proxy.local_addr(), &format!("/n{i}")).text(), format!("tls backend /n{i}"));
    }
    common::wait_until("the backend has seen its three connections end", || backend.endings.lock().unwrap().len() == 3);
    assert_eq!(*backend.endings.lock().unwrap(), ["close_notify"; 3], "each end was meant, not a truncation");
}

/// A loop proxy whose route `/games/` asks `auth_url` first, with `backend_ca` as its trust roots.
fn gateway_with_auth(app: std::net::SocketAddr, auth_url: &str, ca: &std::path::Path) -> pibl::Server {
    let ini = format!(
        "[DEFAULT]\nip_server1 = {app}\nbackend_ca = {}\n\n\
         [route.games]\nprefix = /games/\nservers = {app}\nauth = request\nauth_url = {auth_url}\n",
        ca.display()
    );
    let base = test_config(&[]);
    let mut config = Config::from_ini_str(&ini, "tls-auth.ini").expect("valid config");
    (config.bind, config.port, config.access_log, config.ttl) = (base.bind, 0, false, Duration::ZERO);
    start_proxy(config)
}

#[test]
fn an_https_auth_url_is_asked_over_tls_with_its_certificate_checked() {
    let dir = TempDir::new("tls-auth-url");
    let ca = TestCa::new("auth CA");
    let auth = tls_backend(&dir, &ca);
    let app = common::TestBackend::named("app");
    let auth_url = format!("https://{}/auth", auth.addr);

    let trusted = dir.file("ca.pem", &ca.pem);
    let proxy = gateway_with_auth(app.addr, &auth_url, &trusted);
    let res = get(proxy.local_addr(), "/games/1");
    assert_eq!((res.status, res.text().as_str()), (200, "app"), "the auth server's 200 over TLS lets it through");
    assert_eq!(auth.connections.load(Ordering::SeqCst), 1, "one TLS connection to the auth server");
    assert_eq!(*auth.names.lock().unwrap(), [None], "no SNI for an address");

    // A certificate that does not verify: the auth server cannot be asked, so nothing goes through.
    let stranger = dir.file("stranger.pem", &TestCa::new("someone else").pem);
    let proxy = gateway_with_auth(app.addr, &auth_url, &stranger);
    let res = get(proxy.local_addr(), "/games/2");
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(app.requests(), 1, "nothing reached the app without a decision");
    assert_eq!(auth.connections.load(Ordering::SeqCst), 1, "no request went over the unverified connection");
}

#[test]
fn a_backend_certificate_that_does_not_verify_is_a_502_unless_verification_is_off() {
    let dir = TempDir::new("tls-backends-untrusted");
    let backend = tls_backend(&dir, &TestCa::new("backend CA"));
    let stranger = dir.file("stranger.pem", &TestCa::new("someone else").pem);
    let proxy = loops_with(by_name(&backend), |c| c.backend_ca = stranger.clone());
    let r = get(proxy.local_addr(), "/");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("certificate"), "the answer says why: {}", r.text());
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0, "no request went over the unverified connection");

    let lab = loops_with(by_name(&backend), |c| c.backend_tls_verify = false);
    assert_eq!(get(lab.local_addr(), "/lab").text(), "tls backend /lab");
}

#[test]
fn health_checks_speak_tls_to_https_backends() {
    let dir = TempDir::new("tls-backends-health");
    let ca = TestCa::new("backend CA");
    let backend = tls_backend(&dir, &ca);
    let ca_file = dir.file("ca.pem", &ca.pem);
    let trusted = backend_client_config(BackendTrust::File(&ca_file)).unwrap();
    let t = Duration::from_secs(5);
    assert_eq!(probe_tls(backend.addr, "backend.test", "/status", t, &trusted, "backend.test"), Ok(200));
    let other = dir.file("other.pem", &TestCa::new("someone else").pem);
    let untrusted = backend_client_config(BackendTrust::File(&other)).unwrap();
    let e = probe_tls(backend.addr, "backend.test", "/status", t, &untrusted, "backend.test").unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(pibl::upstream::health::probe(backend.addr, "backend.test", "/status", t).is_err(), "plain HTTP fails");
}

#[test]
fn a_websocket_reaches_a_wss_backend_through_the_tunnel() {
    let dir = TempDir::new("tls-backends-ws");
    let ca = TestCa::new("backend CA");
    let addr = tls_ws_backend(backend_config(&dir, &ca));
    let ca_file = dir.file("ca.pem", &ca.pem);
    let backend = BackendAddr { name: format!("backend.test:{}", addr.port()), addr, tls: true };
    let proxy = loops_with(backend, |c| c.backend_ca = ca_file.clone());
    let stream = std::net::TcpStream::connect(proxy.local_addr()).unwrap();
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let (mut ws, res) = tungstenite::client("ws://t/ws", stream).expect("upgrade through pibl to a wss backend");
    assert_eq!(res.status().as_u16(), 101);
    for i in 0..5 {
        ws.send(tungstenite::Message::text(format!("m{i}"))).unwrap();
        assert_eq!(ws.read().unwrap().to_text().unwrap(), format!("m{i}"));
    }
    let big = common::pattern(200_000);
    ws.send(tungstenite::Message::binary(big.clone())).unwrap();
    assert!(ws.read().unwrap().into_data()[..] == big[..], "a large message changed on the way");
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

#[test]
fn a_stale_entry_from_an_https_backend_is_refreshed_in_the_background_over_tls() {
    let dir = TempDir::new("tls-backends-swr");
    let ca = TestCa::new("backend CA");
    let backend = tls_backend(&dir, &ca);
    let ca_file = dir.file("ca.pem", &ca.pem);
    let proxy = loops_with(by_name(&backend), |c| {
        c.backend_ca = ca_file.clone();
        c.ttl = Duration::from_secs(60);
    });
    let first = get(proxy.local_addr(), "/swr");
    assert_eq!((first.status, first.text()), (200, "tls backend /swr 1".to_string()));
    proxy.clock().advance(Duration::from_secs(5));
    // Stale within stale-while-revalidate: answered from the cache at once, and handed to the
    // background refresher. It once sent the refresh in plain text to the TLS port (the backend saw
    // a failed handshake), then skipped https:// pools; now it speaks TLS, checked against
    // backend_ca like the loops' connections.
    let stale = get(proxy.local_addr(), "/swr");
    assert_eq!(
        (stale.status, stale.header("x-cache"), stale.text()),
        (200, Some("STALE"), "tls backend /swr 1".into())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let refreshed = loop {
        let res = get(proxy.local_addr(), "/swr");
        if res.text() != "tls backend /swr 1" {
            break res;
        }
        assert!(Instant::now() < deadline, "never refreshed: still {:?}", res.header("x-cache"));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((refreshed.header("x-cache"), refreshed.text()), (Some("HIT"), "tls backend /swr 2".into()));
    // The refresher's connection ends with a close_notify; nothing arrived in plain text.
    while !backend.endings.lock().unwrap().contains(&"close_notify") {
        assert!(Instant::now() < deadline, "{:?}", backend.endings.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!backend.endings.lock().unwrap().contains(&"no handshake"), "{:?}", backend.endings.lock().unwrap());
}
