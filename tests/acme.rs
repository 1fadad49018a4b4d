//! ACME end to end against Pebble, Let's Encrypt's test server (Debian package `pebble`), started
//! here on loopback ports: its HTTP-01 checks really come to pibl's plain port, because
//! `pebble-challtestsrv` answers Pebble's DNS queries with 127.0.0.1 and Pebble's `httpPort` is that
//! port. Issue, serve (the certificate lands in the store and a TLS handshake verifies it against
//! Pebble's root), renew, revoke-and-reissue, restart from the stored files, and a running pibl
//! whose background thread gets its certificate, serves it on its TLS listener and shows the days
//! left in `/metrics`, then replaces and revokes it when an admin asks through `POST /api/tls/revoke`. Without Pebble installed the Pebble tests say so loudly and pass without running.

mod common;
mod tls_common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{api_config, start_proxy, test_config, TempDb, TempDir, TestBackend};
use pibl::clock::Clock;
use pibl::tls::acme::{AcmeClient, AcmeError, AcmeSettings, Checked};
use pibl::tls::challenge::Challenges;
use pibl::tls::server::server_config;
use pibl::tls::store::CertStore;
use tls_common::{client_trusting, TestCa, TestListener, TlsClient};

const DOMAINS: [&str; 2] = ["pibl-test.example.com", "www.pibl-test.example.com"];

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pebble and its DNS responder, on loopback.
struct Pebble {
    _dns: Running,
    _acme: Running,
    directory: String,
    management: SocketAddr,
    /// The CA of Pebble's own HTTPS certificate (made here), for `acme_ca_root`.
    https_ca: TestCa,
    https_ca_file: PathBuf,
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free UDP port").port()
}

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts Pebble validating HTTP-01 on `http_port`, or `None` (with a loud message) when the
/// package is not installed.
fn start_pebble(dir: &TempDir, http_port: u16) -> Option<Pebble> {
    let (Some(pebble), Some(challtestsrv)) = (find_binary("pebble"), find_binary("pebble-challtestsrv")) else {
        // Straight to stderr, past the test harness's capture, so the skip shows in every run.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: Pebble is not installed, so ACME was NOT tested end to end. ***\n\
             *** Install it with `apt-get install pebble` (.ci/run does this as root).  ***\n"
        );
        return None;
    };
    let https_ca = TestCa::new("pebble https test CA");
    let (cert, key) = https_ca.leaf(&["localhost", "127.0.0.1"]).write(&dir.0, "pebble-https");
    let https_ca_file = dir.file("pebble-https-ca.pem", &https_ca.pem);
    let (acme_port, management_port, tls_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let (dns_port, dns_management_port) = (free_udp_port(), free_tcp_port());
    let config = dir.file(
        "pebble.json",
        &format!(
            r#"{{"pebble": {{
                "listenAddress": "127.0.0.1:{acme_port}",
                "managementListenAddress": "127.0.0.1:{management_port}",
                "certificate": "{}", "privateKey": "{}",
                "httpPort": {http_port}, "tlsPort": {tls_port},
                "ocspResponderURL": "", "externalAccountBindingRequired": false
            }}}}"#,
            cert.display(),
            key.display()
        ),
    );
    let log = |name: &str| fs::File::create(dir.0.join(name)).map(Stdio::from).expect("log file");
    // Every name resolves to 127.0.0.1 (and has no IPv6 address), so validation comes to pibl.
    let dns = Running(
        Command::new(challtestsrv)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .stdout(log("challtestsrv.out"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    let acme = Running(
        Command::new(pebble)
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleeps before validating, no nonces refused on purpose, and a fresh
            // validation for every order (so a renewal proves HTTP-01 again).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(&dir.0)
            .stdout(log("pebble.out"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("start pebble"),
    );
    let up = |port: u16| move || TcpStream::connect(("127.0.0.1", port)).is_ok();
    wait_for("Pebble listens", Duration::from_secs(30), up(acme_port));
    wait_for("Pebble's management port listens", Duration::from_secs(30), up(management_port));
    wait_for("pebble-challtestsrv listens", Duration::from_secs(30), up(dns_management_port));
    Some(Pebble {
        _dns: dns,
        _acme: acme,
        directory: format!("https://127.0.0.1:{acme_port}/dir"),
        management: SocketAddr::from(([127, 0, 0, 1], management_port)),
        https_ca,
        https_ca_file,
    })
}

impl Pebble {
    /// GET over HTTPS on the management port; the body.
    fn manage(&self, path: &str) -> String {
        let mut client = TlsClient::connect(self.management, self.https_ca.client(), "localhost").expect("management");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        client.tls.write_all(request.as_bytes()).expect("send");
        let mut bytes = Vec::new();
        // Go may close without close_notify: whatever arrived before the close is the answer.
        let _ = client.tls.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).to_string();
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// The root Pebble issues under (made fresh at each start).
    fn root_pem(&self) -> String {
        self.manage("/roots/0")
    }

    fn status_of(&self, serial: &str) -> String {
        self.manage(&format!("/cert-status-by-serial/{serial}"))
    }

    fn settings(&self, acme_dir: &Path) -> AcmeSettings {
        AcmeSettings {
            directory: self.directory.clone(),
            email: "ops@example.com".into(),
            domains: DOMAINS.iter().map(|d| d.to_string()).collect(),
            dir: acme_dir.to_path_buf(),
            ca_root: Some(self.https_ca_file.clone()),
        }
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

#[test]
fn issue_serve_renew_revoke_and_restart_against_pebble() {
    let dir = TempDir::new("acme-pebble");
    // pibl's plain port, as a user would run it: ACME on, redirects on, a backend behind.
    let backend = TestBackend::named("app");
    let mut config = test_config(&[backend.addr]);
    config.acme_domains = DOMAINS.iter().map(|d| d.to_string()).collect();
    config.tls_port = 8443;
    config.https_redirect = true;
    let proxy = start_proxy(config);
    let Some(pebble) = start_pebble(&dir, proxy.local_addr().port()) else { return };
    let acme_dir = dir.0.join("acme");
    let store = Arc::new(CertStore::default());
    let challenges: Arc<Challenges> = proxy.challenges();
    let now = SystemTime::now();
    let mut client =
        AcmeClient::new(pebble.settings(&acme_dir), Arc::clone(&store), Arc::clone(&challenges), now).expect("client");
    assert!(client.current().is_none() && store.current().is_empty());

    // Issue: Pebble validates both names over HTTP on pibl's plain port.
    assert_eq!(client.check(now).expect("issued"), Checked::Issued);
    let first = client.current().expect("a certificate").clone();
    let mut names = first.names.clone();
    names.sort();
    assert_eq!(names, DOMAINS, "both names, in whatever order the CA wrote them");
    assert!(challenges.is_empty(), "the answers are withdrawn after the order");
    assert_eq!(backend.requests(), 0, "pibl answered the challenges itself; nothing was redirected or forwarded");
    let crt = acme_dir.join("pibl-test.example.com.crt");
    for file in [crt.clone(), acme_dir.join("pibl-test.example.com.key"), acme_dir.join("account.json")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(client.days_left().load(Ordering::Relaxed), first.days_left(now));
    assert!(first.days_left(now) > 30, "Pebble's certificates are long-lived");

    // Serve: the store hands it out by SNI, and a client trusting only Pebble's root accepts it.
    let root = pebble.root_pem();
    assert!(root.contains("BEGIN CERTIFICATE"), "Pebble's root: {root}");
    let addr = TestListener::start(server_config(Arc::clone(&store)).unwrap()).addr;
    let mut open = TlsClient::connect(addr, client_trusting(root.as_bytes()), "www.pibl-test.example.com")
        .expect("the issued certificate verifies against Pebble's root");
    assert_eq!(open.leaf(), *first.leaf());
    assert!(pebble.status_of(&first.serial).contains("Valid"));

    // Nothing due now; due a day before expiry: renewed with a new key, served, the old connection goes on.
    assert!(matches!(client.check(now), Ok(Checked::Valid(days)) if days > 30));
    let late = first.not_after - Duration::from_secs(86_400);
    assert_eq!(client.check(late).expect("renewed"), Checked::Issued);
    let renewed = client.current().unwrap().clone();
    assert_ne!(renewed.serial, first.serial);
    assert_ne!(renewed.key.key.public_key(), first.key.key.public_key(), "a renewal gets a new key");
    let fresh = TlsClient::connect(addr, client_trusting(root.as_bytes()), "pibl-test.example.com").unwrap();
    assert_eq!(fresh.leaf(), *renewed.leaf());
    assert_eq!(open.echo("after renewal").unwrap(), "echo: after renewal");

    // Revoke and reissue: a new certificate is served first, then the old one is revoked at Pebble.
    client.revoke_and_reissue(now).expect("revoked and reissued");
    assert_eq!(client.unrevoked(), None, "the revocation went through");
    let third = client.current().unwrap().clone();
    assert_ne!(third.serial, renewed.serial);
    let status = pebble.status_of(&renewed.serial);
    assert!(status.contains("Revoked"), "Pebble says: {status}");
    assert!(pebble.status_of(&third.serial).contains("Valid"));
    assert_eq!(store.current().lookup(Some("www.pibl-test.example.com")).unwrap().serial, third.serial);

    // A restart finds the stored certificate (and account) and orders nothing.
    drop(client);
    let store2 = Arc::new(CertStore::default());
    let mut again = AcmeClient::new(pebble.settings(&acme_dir), Arc::clone(&store2), challenges, now).unwrap();
    assert_eq!(again.current().map(|c| c.serial.clone()), Some(third.serial.clone()));
    assert_eq!(store2.current().lookup(None).unwrap().serial, third.serial);
    assert!(matches!(again.check(now), Ok(Checked::Valid(_))));
    // acme_domains edited: the stored certificate no longer fits, and is not served.
    let mut more = pebble.settings(&acme_dir);
    more.domains.push("new.pibl-test.example.com".into());
    let changed = AcmeClient::new(more, Arc::new(CertStore::default()), Arc::new(Challenges::default()), now).unwrap();
    assert!(changed.current().is_none() && changed.is_due(now));
    proxy.shutdown();
}

#[test]
fn a_running_pibl_gets_its_certificate_in_the_background_and_shows_days_left() {
    let dir = TempDir::new("acme-thread");
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let Some(pebble) = start_pebble(&dir, proxy.local_addr().unwrap().port()) else { return };
    let db = TempDb::new("acme-thread");
    let mut config = api_config(&[], &db);
    config.acme_domains = DOMAINS.iter().map(|d| d.to_string()).collect();
    config.acme_directory = pebble.directory.clone();
    config.acme_ca_root = pebble.https_ca_file.clone();
    config.acme_dir = dir.0.join("acme");
    config.tls_port = free_tcp_port();
    let api = TcpListener::bind("127.0.0.1:0").expect("bind api");
    let pibl = pibl::Pibl::start_on(proxy, api, config, Clock::system()).expect("pibl starts");
    let store = pibl.https().expect("HTTPS parts run").store();
    wait_for("the ACME thread installed a certificate", Duration::from_secs(60), || !store.current().is_empty());
    // Served on pibl's own TLS listener, verified against Pebble's root.
    let tls_addr = pibl.server().tls_addr().expect("the TLS listener");
    let root = pebble.root_pem();
    let served = TlsClient::connect(tls_addr, client_trusting(root.as_bytes()), "www.pibl-test.example.com")
        .expect("the ACME certificate verifies on the TLS listener");
    assert_eq!(served.leaf(), *store.current().lookup(Some("pibl-test.example.com")).unwrap().leaf());
    let metrics = common::get(pibl.api_addr(), "/metrics").text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pibl_tls_certificate_days_left{name=\"pibl-test.example.com\"} "))
        .unwrap_or_else(|| panic!("no days-left gauge in {metrics}"));
    let days: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(days > 30, "{line}");

    // An operator revokes through the API: only an admin may; the answer comes at once (202) and
    // the work is done by the ACME thread, which serves a new certificate, then revokes the old one.
    let first = store.current().lookup(Some("pibl-test.example.com")).unwrap().serial.clone();
    let user = common::register_and_login(pibl.api_addr(), "user@pibl.test");
    for path in ["/api/tls", "/api/tls/revoke"] {
        let method = if path == "/api/tls" { "GET" } else { "POST" };
        let res = common::api(pibl.api_addr(), method, path, Some(&user), None);
        assert_eq!(res.status, 403, "{method} {path} by a user: {}", res.text());
    }
    let admin = common::admin_login(&pibl);
    let shown = common::api(pibl.api_addr(), "GET", "/api/tls", Some(&admin), None).json();
    assert_eq!(shown["acme"]["serial"], first.as_str(), "{shown}");
    assert_eq!(shown["certificates"][0]["serial"], first.as_str(), "{shown}");
    assert!(shown["acme"]["last_error"].is_null() && shown["acme"]["unrevoked"].is_null(), "{shown}");
    let res = common::api(pibl.api_addr(), "POST", "/api/tls/revoke", Some(&admin), None);
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(res.json()["serial"], first.as_str());
    let mut report = serde_json::Value::Null;
    wait_for("the ACME thread replaced and revoked the certificate", Duration::from_secs(60), || {
        report = common::api(pibl.api_addr(), "GET", "/api/tls", Some(&admin), None).json();
        report["acme"]["revoke_requested_by"].is_null() && report["acme"]["serial"] != first.as_str()
    });
    let second = report["acme"]["serial"].as_str().expect("a serial").to_string();
    assert!(report["acme"]["last_error"].is_null() && report["acme"]["unrevoked"].is_null(), "{report}");
    assert!(pebble.status_of(&first).contains("Revoked"), "Pebble on the old one: {}", pebble.status_of(&first));
    assert!(pebble.status_of(&second).contains("Valid"));
    let served = TlsClient::connect(tls_addr, client_trusting(root.as_bytes()), "pibl-test.example.com").unwrap();
    assert_eq!(served.leaf(), *store.current().lookup(None).unwrap().leaf());
    assert_eq!(store.current().lookup(None).unwrap().serial, second, "the new one is served");
    assert!(pibl.shutdown());
}

#[test]
fn revoking_without_acme_is_refused_and_says_why() {
    let db = TempDb::new("tls-api-no-acme");
    let pibl = common::start_pibl(api_config(&[], &db), Clock::system());
    let admin = common::admin_login(&pibl);
    let res = common::api(pibl.api_addr(), "POST", "/api/tls/revoke", Some(&admin), None);
    assert_eq!(res.status, 409, "{}", res.text());
    assert!(res.json()["error"].as_str().unwrap().starts_with("ACME is off"), "{}", res.text());
    let shown = common::api(pibl.api_addr(), "GET", "/api/tls", Some(&admin), None).json();
    assert_eq!(shown, serde_json::json!({"certificates": [], "acme": null}));
    assert!(pibl.shutdown());
}

#[test]
fn an_unreachable_acme_server_is_the_servers_fault_and_nothing_changes() {
    let dir = TempDir::new("acme-down");
    let closed = free_tcp_port();
    let settings = AcmeSettings {
        directory: format!("https://127.0.0.1:{closed}/dir"),
        email: String::new(),
        domains: vec!["pibl-test.example.com".into()],
        dir: dir.0.join("acme"),
        ca_root: None,
    };
    let store = Arc::new(CertStore::default());
    let mut client =
        AcmeClient::new(settings, Arc::clone(&store), Arc::new(Challenges::default()), SystemTime::now()).unwrap();
    match client.check(SystemTime::now()) {
        Err(AcmeError::Server(e)) => assert!(!e.is_empty()),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(store.current().is_empty());
    assert!(!dir.0.join("acme/account.json").exists());
}
