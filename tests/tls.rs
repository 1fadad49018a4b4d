//! HTTPS parts on their own, through real rustls handshakes: PEM loading and its errors, the SNI
//! certificate store and its reload, ALPN and protocol versions, the backend client configuration,
//! `https://` backends in the config, and the plain port's redirects and ACME challenge answers. The TLS listener of the data plane itself is tested in `tls_proxy.rs`.

#[macro_use]
mod common;
mod tls_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use common::{start_proxy, test_config, Client, TempDir, TestBackend};
use pibl::config::Config;
use pibl::tls::client::{backend_client_config, backend_server_name, BackendTrust};
use pibl::tls::pem::load_pair;
use pibl::tls::server::server_config;
use pibl::tls::sites::{load_configured, reload};
use pibl::tls::store::CertStore;
use rustls::ProtocolVersion;
use tls_common::{first_der, TestCa, TestListener, TlsClient};

/// A config with `tls_cert` = default.test, `[tls.shop]` = shop.test and a `tls_dir` pair for
/// *.wild.test, all written into `dir`.
fn three_sites(dir: &TempDir, ca: &TestCa) -> Config {
    let (cert, key) = ca.leaf(&["default.test"]).write(&dir.0, "default");
    let (shop_cert, shop_key) = ca.leaf(&["shop.test", "www.shop.test"]).write(&dir.0, "shop");
    let sites = dir.0.join("sites");
    std::fs::create_dir_all(&sites).unwrap();
    ca.leaf(&["*.wild.test"]).write(&sites, "wild");
    let text = format!(
        "tls_port = 8443\ntls_cert = {}\ntls_key = {}\ntls_dir = {}\n[tls.shop]\ncert = {}\nkey = {}\nhosts = shop.test\n",
        cert.display(),
        key.display(),
        sites.display(),
        shop_cert.display(),
        shop_key.display()
    );
    Config::from_ini_str(&text, "test.ini").expect("config loads")
}

/// The three sites of [`three_sites`] in a store, served by a test listener.
struct ThreeSites {
    dir: TempDir,
    ca: TestCa,
    store: Arc<CertStore>,
    addr: SocketAddr,
}

fn serve_three_sites(name: &str) -> ThreeSites {
    let dir = TempDir::new(name);
    let ca = TestCa::new("pibl test CA");
    let config = three_sites(&dir, &ca);
    let store = Arc::new(CertStore::new(load_configured(&config, SystemTime::now()).expect("certificates load")));
    let addr = listener_for(&store);
    ThreeSites { dir, ca, store, addr }
}

fn listener_for(store: &Arc<CertStore>) -> SocketAddr {
    TestListener::start(server_config(Arc::clone(store)).expect("server config")).addr
}

#[test]
fn sni_chooses_the_certificate_and_clients_without_sni_get_the_default() {
    let ThreeSites { dir, ca, store, addr } = serve_three_sites("tls-sni");

    let shop = load_pair(&dir.0.join("shop.crt"), &dir.0.join("shop.key"), SystemTime::now()).unwrap();
    let mut client = TlsClient::connect(addr, ca.client(), "shop.test").expect("handshake for shop.test");
    assert_eq!(client.leaf(), *shop.leaf(), "shop.test gets [tls.shop]'s certificate");
    assert_eq!(client.echo("hi").unwrap(), "echo: hi");
    // `hosts = shop.test` narrows the site to that name: www.shop.test falls to the default, which
    // does not cover it, so a checking client refuses it.
    assert!(TlsClient::connect(addr, ca.client(), "www.shop.test").is_err());

    let wild = TlsClient::connect(addr, ca.client(), "a.wild.test").expect("the wildcard from tls_dir");
    assert_eq!(wild.leaf(), first_der(&std::fs::read_to_string(dir.0.join("sites/wild.crt")).unwrap()));

    let mut no_sni = ca.client();
    no_sni.enable_sni = false;
    let plain = TlsClient::connect(addr, no_sni, "default.test").expect("no SNI: the default certificate");
    assert_eq!(plain.leaf(), first_der(&std::fs::read_to_string(dir.0.join("default.crt")).unwrap()));
    assert_eq!(store.current().certs().len(), 3);
}

#[test]
fn a_renewed_default_certificate_is_served_to_clients_without_sni_too() {
    let ThreeSites { dir, ca, store, addr } = serve_three_sites("tls-renew-default");
    let (cert, key) = ca.leaf(&["default.test"]).write(&dir.0, "default-renewed");
    let renewed = load_pair(&cert, &key, SystemTime::now()).unwrap();
    // As a renewal installs it: for the names it was ordered for.
    store.install(renewed.clone(), &["default.test".to_string()]);
    let mut no_sni = ca.client();
    no_sni.enable_sni = false;
    let plain = TlsClient::connect(addr, no_sni, "default.test").expect("no SNI: the default certificate");
    assert_eq!(plain.leaf(), *renewed.leaf(), "the default follows its renewal");
    assert_eq!(store.current().certs().len(), 3, "the old one is served nowhere");
    // Renewing another site leaves the default alone.
    let (cert, key) = ca.leaf(&["shop.test"]).write(&dir.0, "shop-renewed");
    store.install(load_pair(&cert, &key, SystemTime::now()).unwrap(), &["shop.test".to_string()]);
    assert_eq!(store.current().lookup(None).unwrap().serial, renewed.serial);
}

#[test]
fn alpn_is_http11_and_only_tls_12_and_13_are_spoken() {
    let dir = TempDir::new("tls-alpn");
    let ca = TestCa::new("pibl test CA");
    let store = Arc::new(CertStore::new(load_configured(&three_sites(&dir, &ca), SystemTime::now()).unwrap()));
    let addr = listener_for(&store);

    let mut offers_h2 = ca.client();
    offers_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = TlsClient::connect(addr, offers_h2, "shop.test").unwrap();
    assert_eq!(client.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(client.tls.conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));

    let mut only_h2 = ca.client();
    only_h2.alpn_protocols = vec![b"h2".to_vec()];
    assert!(TlsClient::connect(addr, only_h2, "shop.test").is_err(), "no common protocol: refused");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_der(&ca.pem)).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = TlsClient::connect(addr, tls12, "shop.test").expect("TLS 1.2 is served");
    assert_eq!(client.tls.conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));

    // TLS 1.0 and 1.1 (rustls has neither) are refused, 1.2 and 1.3 accepted: checked with openssl's
    // client when it is installed (the accepted ones show the check itself works).
    if std::process::Command::new("openssl").arg("version").output().is_ok() {
        let s_client = |flag: &str| {
            let out = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string(), "-servername", "shop.test", flag])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("openssl runs");
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            (out.status.success() && !text.contains("Cipher is (NONE)"), text)
        };
        for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let (ok, text) = s_client(flag);
            assert!(ok && text.contains(version), "{flag} was refused: {text}");
        }
        for flag in ["-tls1", "-tls1_1"] {
            let (ok, text) = s_client(flag);
            assert!(!ok, "{flag} was accepted: {text}");
        }
    } else {
        eprintln!("openssl is not installed: the TLS 1.0/1.1 refusal is checked only by rustls having neither");
    }
}

#[test]
fn reload_swaps_certificates_but_open_connections_keep_theirs_and_a_broken_pair_is_refused() {
    let dir = TempDir::new("tls-reload");
    let ca = TestCa::new("pibl test CA");
    let mut config = three_sites(&dir, &ca);
    let store = Arc::new(CertStore::new(load_configured(&config, SystemTime::now()).unwrap()));
    let addr = listener_for(&store);
    let mut old = TlsClient::connect(addr, ca.client(), "shop.test").unwrap();
    let old_leaf = old.leaf();

    // A renewed shop certificate, written where [tls.shop] points, then reloaded.
    ca.leaf(&["shop.test"]).write(&dir.0, "shop");
    reload(&store, &config, SystemTime::now()).expect("the new pair loads");
    let new = TlsClient::connect(addr, ca.client(), "shop.test").unwrap();
    assert_ne!(new.leaf(), old_leaf, "new connections get the new certificate");
    assert_eq!(old.echo("still here").unwrap(), "echo: still here", "the open connection goes on");
    assert_eq!(old.leaf(), old_leaf);

    // A key that belongs to another certificate: refused, and the store keeps serving the last good set.
    let served = new.leaf();
    let other = ca.leaf(&["shop.test"]);
    std::fs::write(dir.0.join("shop.key"), &other.key_pem).unwrap();
    let e = reload(&store, &config, SystemTime::now()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: does not match the certificate in {}",
            dir.0.join("shop.key").display(),
            dir.0.join("shop.crt").display()
        )
    );
    assert_eq!(TlsClient::connect(addr, ca.client(), "shop.test").unwrap().leaf(), served);

    // Every other way a file can be wrong says which file and what.
    let now = SystemTime::now();
    config.tls_sites[0].key = dir.0.join("missing.key");
    assert!(reload(&store, &config, now).unwrap_err().to_string().ends_with("missing.key: does not exist"));
    let empty = dir.file("empty.crt", "not a certificate\n");
    let e = load_pair(&empty, &dir.0.join("default.key"), now).unwrap_err();
    assert_eq!(e.problem, "holds no certificate (expected -----BEGIN CERTIFICATE-----)");
    let no_key = dir.file("no.key", "");
    let e = load_pair(&dir.0.join("default.crt"), &no_key, now).unwrap_err();
    assert!(e.to_string().contains("no.key: holds no private key"), "{e}");
    let expired = ca.leaf_with(&["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let (cert, key) = expired.write(&dir.0, "old");
    let e = load_pair(&cert, &key, now).unwrap_err();
    assert_eq!(e.to_string(), format!("{}: expired on Wed, 01 Jan 2020 00:00:00 GMT", cert.display()));
    let broken = dir.file("broken.crt", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
    assert!(load_pair(&broken, &key, now).unwrap_err().problem.starts_with("is not valid PEM"));
    assert_eq!(TlsClient::connect(addr, ca.client(), "shop.test").unwrap().leaf(), served, "still the good one");
}

#[test]
fn backend_client_checks_certificates_against_backend_ca_unless_told_not_to() {
    let dir = TempDir::new("tls-backend");
    let ca = TestCa::new("backend CA");
    let (cert, key) = ca.leaf(&["127.0.0.1", "backend.test"]).write(&dir.0, "backend");
    let mut set = pibl::tls::store::CertSet::default();
    set.insert(load_pair(&cert, &key, SystemTime::now()).unwrap(), &[]);
    let addr = listener_for(&Arc::new(CertStore::new(set)));
    let ca_file = dir.file("ca.pem", &ca.pem);

    let trusted = backend_client_config(BackendTrust::File(&ca_file)).expect("backend_ca loads");
    let by_ip = backend_server_name("127.0.0.1").unwrap();
    assert!(matches!(by_ip, rustls::pki_types::ServerName::IpAddress(_)));
    let mut client = TlsClient::connect(addr, (*trusted).clone(), "backend.test").expect("verified by backend_ca");
    assert_eq!(client.echo("x").unwrap(), "echo: x");
    assert_eq!(client.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    let stranger = TestCa::new("someone else");
    let other_ca = dir.file("other.pem", &stranger.pem);
    let untrusted = backend_client_config(BackendTrust::File(&other_ca)).unwrap();
    let e = TlsClient::connect(addr, (*untrusted).clone(), "backend.test").err().expect("an unknown issuer is refused");
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");

    let lab = backend_client_config(BackendTrust::from_keys(std::path::Path::new(""), false)).unwrap();
    assert!(TlsClient::connect(addr, (*lab).clone(), "anything.test").is_ok(), "backend_tls_verify = off");

    let e = backend_client_config(BackendTrust::File(&dir.0.join("nope.pem"))).unwrap_err();
    assert!(e.to_string().ends_with("nope.pem: does not exist"), "{e}");
    assert_eq!(BackendTrust::from_keys(std::path::Path::new(""), true), BackendTrust::System);
}

#[test]
fn tls_keys_and_sections_are_read_and_written_back() {
    let text = "tls_port = 443\ntls_cert = /etc/pibl/a.crt\ntls_key = /etc/pibl/a.key\nhttps_redirect = on\nhsts = 8760h\n\
                acme_domains = Example.com, www.example.com\nacme_email = ops@example.com\nbackend_tls_verify = off\n\
                ip_server1 = https://127.0.0.1:9443\n[tls.shop]\ncert = s.crt\nkey = s.key\nhosts = shop.test, *.shop.test\n";
    let config = Config::from_ini_str(text, "t.ini").expect("loads");
    assert_eq!(config.tls_port, 443);
    assert_eq!(config.acme_domains, ["example.com", "www.example.com"]);
    assert_eq!(config.acme_directory, pibl::config::LETS_ENCRYPT);
    assert_eq!(config.tls_sites[0].hosts, ["shop.test", "*.shop.test"]);
    assert!(config.backends[0].tls && !config.backend_tls_verify);
    let again = Config::from_ini_str(&config.to_ini(), "again.ini").expect("written file loads");
    assert_eq!(again, config);

    for (bad, says) in [
        ("tls_cert = a.crt\n", "tls_cert: needs tls_key too"),
        ("https_redirect = on\n", "https_redirect: needs tls_port"),
        ("tls_port = 443\n", "tls_port: needs a certificate"),
        ("acme_domains = *.example.com\n", "wildcard"),
        ("acme_directory = http://example.com/dir\n", "not an ACME directory URL"),
        ("[tls.x]\ncert = a\n", "has no key"),
        ("[tls.x]\ncert = a\nkey = b\nport = 1\n", "unknown key"),
        ("ip_server1 = ftp://h\n", "has a scheme"),
    ] {
        let e = Config::from_ini_str(bad, "t.ini").unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

#[test]
fn https_redirect_answers_308_on_the_plain_port_except_acme_challenges() {
    let backend = TestBackend::named("app");
    let mut config = test_config(&[backend.addr]);
    config.tls_port = 8443;
    config.https_redirect = true;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    let mut client = Client::connect(addr);
    client.send(b"GET /shop/cart?id=7 HTTP/1.1\r\nHost: Example.test:8080\r\n\r\n");
    let r = client.read_response(false).unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://example.test:8443/shop/cart?id=7"));
    assert_eq!(r.header("strict-transport-security"), None, "never over plain HTTP (RFC 6797)");
    // The connection stays usable, and a HEAD gets the same answer without a body.
    client.send(b"HEAD /x HTTP/1.1\r\nHost: example.test\r\n\r\n");
    let r = client.read_response(true).unwrap();
    assert_eq!((r.status, r.header("location")), (308, Some("https://example.test:8443/x")));

    let r = common::request(addr, b"GET / HTTP/1.1\r\nHost: evil.test/@x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400, "a Host that is not a host name is not redirected to");

    proxy.challenges().insert("tok-abc", "tok-abc.thumbprint");
    let r = common::get(addr, "/.well-known/acme-challenge/tok-abc");
    assert_eq!((r.status, r.text().as_str()), (200, "tok-abc.thumbprint"));
    assert_eq!(backend.requests(), 0, "nothing reached the backend");
    // Without ACME in pibl, other challenges are a backend's own (certbot --webroot behind pibl):
    // forwarded, not redirected.
    let r = common::get(addr, "/.well-known/acme-challenge/unknown");
    assert_eq!(r.status, 200);
    assert_eq!(backend.requests(), 1);
    proxy.shutdown();
}

#[test]
fn pibl_refuses_to_start_with_a_broken_certificate() {
    let dir = TempDir::new("tls-start");
    let ca = TestCa::new("pibl test CA");
    let (cert, _) = ca.leaf(&["a.test"]).write(&dir.0, "a");
    let other = ca.leaf(&["a.test"]);
    let key = dir.file("other.key", &other.key_pem);
    let db = common::TempDb::new("tls-start");
    let mut config = common::api_config(&[], &db);
    config.tls_cert = cert.clone();
    config.tls_key = key.clone();
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = pibl::Pibl::start_on(bind(), bind(), config.clone(), pibl::clock::Clock::system()).err().expect("refused");
    assert_eq!(e.to_string(), format!("{}: does not match the certificate in {}", key.display(), cert.display()));

    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let only_dir = Config { tls_port: 8443, tls_dir: empty.clone(), ..common::api_config(&[], &db) };
    let e = pibl::Pibl::start_on(bind(), bind(), only_dir, pibl::clock::Clock::system()).err().expect("refused");
    assert!(e.to_string().contains("no certificate to serve"), "{e}");

    config.tls_key = dir.0.join("a.key");
    config.tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tls_port = config.tls_port;
    let running =
        pibl::Pibl::start_on(bind(), bind(), config, pibl::clock::Clock::system()).expect("a good pair starts");
    let https = running.https().expect("HTTPS parts");
    let served = https.store().current().lookup(None).expect("the default");
    assert_eq!(served.names, ["a.test"]);
    assert!(https.backend_config().is_none(), "no https:// backend: the system roots are not even read");
    // What the event loops will serve with: a real handshake through it.
    let listener = TestListener::start(https.server_config().expect("tls_port is set"));
    let client = TlsClient::connect(listener.addr, ca.client(), "a.test").expect("handshake");
    assert_eq!(client.leaf(), *served.leaf());
    // And the data plane's own TLS listener on tls_port.
    let tls_addr = running.server().tls_addr().expect("the TLS listener");
    assert_eq!(tls_addr.port(), tls_port);
    let client = TlsClient::connect(tls_addr, ca.client(), "a.test").expect("handshake on tls_port");
    assert_eq!(client.leaf(), *served.leaf());
    assert!(running.shutdown());
}
