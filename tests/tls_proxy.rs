//! HTTPS through the real `proxy` binary: requests
//! proxied over TLS with `X-Forwarded-Proto: https`, cache hits, keep-alive and pipelining, a large
//! response under back-pressure, SNI and a certificate swapped by SIGHUP, WebSockets through the
//! tunnel, HSTS, redirects from the plain port, and clients that do not speak TLS, stop
//! mid-handshake, send garbage or nothing at all, while the loops keep serving.

#[macro_use]
mod common;
mod tls_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{ok, pattern, read_response_from, Reply, Response, TempDir, TestBackend, WAIT};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tls_common::{first_der, TestCa, TlsClient};

/// The `proxy` binary with a TLS listener serving `default.test` (and `shop.test` from a
/// `[tls.shop]` section), its CA, and where it listens.
struct Https {
    proxy: common::ProxyProcess,
    tls: SocketAddr,
    ca: TestCa,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Https {
    /// Starts the proxy for `backend` with `extra` keys in `[DEFAULT]`.
    fn start(name: &str, backend: SocketAddr, extra: &str) -> Https {
        let dir = TempDir::new(name);
        let ca = TestCa::new("pibl test CA");
        let (cert, key) = ca.leaf(&["default.test"]).write(&dir.0, "default");
        let (shop_cert, shop_key) = ca.leaf(&["shop.test"]).write(&dir.0, "shop");
        let tls_port = free_port();
        let keys = format!(
            "tls_port = {tls_port}\ntls_cert = {}\ntls_key = {}\n{extra}\n[tls.shop]\ncert = {}\nkey = {}\nhosts = shop.test\n",
            cert.display(),
            key.display(),
            shop_cert.display(),
            shop_key.display()
        );
        let proxy = common::ProxyProcess::start(&dir, backend, &keys);
        Https { proxy, tls: SocketAddr::from(([127, 0, 0, 1], tls_port)), ca, dir }
    }

    fn connect(&self, name: &str) -> Tls {
        Tls::connect(self.tls, self.ca.client(), name)
    }

    /// A value of `/metrics` on the API port (0 when the line is not there).
    fn metric(&self, line_start: &str) -> u64 {
        let text = common::get(self.proxy.api_addr, "/metrics").text();
        text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    }

    fn handshake_failures(&self, reason: &str) -> u64 {
        self.metric(&format!("pibl_tls_handshake_failures_total{{reason=\"{reason}\"}} "))
    }
}

/// An HTTP client over a TLS connection.
struct Tls {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Tls {
    fn connect(addr: SocketAddr, config: ClientConfig, name: &str) -> Tls {
        let client = TlsClient::connect(addr, config, name).expect("TLS handshake with pibl");
        Tls { tls: client.tls, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("send over TLS");
        self.tls.flush().expect("flush");
    }

    fn read_response(&mut self) -> std::io::Result<Response> {
        read_response_from(&mut self.tls, &mut self.buf, false)
    }

    fn get(&mut self, path: &str, host: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.read_response().expect("a response over TLS")
    }

    fn leaf(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.tls.conn.peer_certificates().expect("a certificate")[0].clone().into_owned()
    }
}

/// A backend that answers with the target it was asked for, cacheable for a minute.
fn echo_backend() -> TestBackend {
    TestBackend::start(|r| {
        let body = format!("you asked for {}", r.target);
        Reply::Raw(
            format!("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_bytes(),
        )
    })
}

#[test]
fn a_get_over_tls_reaches_the_backend_as_https_and_the_cache_answers_the_next() {
    let backend = echo_backend();
    let https = Https::start("tls-proxy-get", backend.addr, "ttl = 60\nhsts = 1h");
    let mut client = https.connect("default.test");
    assert_eq!(client.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // What the client claims about the scheme is replaced by what pibl knows.
    client.send(b"GET /a HTTP/1.1\r\nHost: default.test\r\nX-Forwarded-Proto: http\r\n\r\n");
    let r = client.read_response().expect("response");
    assert_eq!((r.status, r.text().as_str()), (200, "you asked for /a"));
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(r.header("strict-transport-security"), Some("max-age=3600"), "HSTS over TLS");
    let seen = backend.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-proto")).count(), 1);

    let r = client.get("/a", "default.test");
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")), "the stored copy answers over TLS");
    assert_eq!(r.header("strict-transport-security"), Some("max-age=3600"), "HSTS on a cache hit too");
    assert_eq!(backend.requests(), 1);
    // pibl's own answers carry it too (an unknown method is refused before any backend).
    client.send(b"GET /b HTTP/1.1\r\nHost: default.test\r\nContent-Length: x\r\n\r\n");
    let r = client.read_response().expect("an error answer");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=3600"));

    // The plain port: X-Forwarded-Proto http whatever the client said, and never HSTS (RFC 6797).
    let r = common::request(
        https.proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(backend.last().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn keep_alive_and_pipelining_over_tls() {
    let backend = echo_backend();
    let https = Https::start("tls-proxy-pipeline", backend.addr, "");
    let mut client = https.connect("default.test");
    let mut three = Vec::new();
    for i in 0..3 {
        three.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: default.test\r\n\r\n").as_bytes());
    }
    client.send(&three);
    for i in 0..3 {
        let r = client.read_response().expect("pipelined response");
        assert_eq!(r.text(), format!("you asked for /p{i}"), "answers in order");
    }
    for i in 3..6 {
        assert_eq!(client.get(&format!("/p{i}"), "default.test").text(), format!("you asked for /p{i}"));
    }
    assert_eq!(backend.requests(), 6);
    assert_eq!(https.handshake_failures("refused") + https.handshake_failures("closed"), 0);
}

#[test]
fn a_large_response_streams_over_tls_and_a_client_that_stops_reading_holds_back_the_backend() {
    // Far more than the kernel's buffers can hold, so what pibl keeps back shows.
    let ceiling = common::kernel_buffer_ceiling();
    let total = ceiling + (32 << 20);
    let (backend, written) = common::counting_backend(total);
    let https = Https::start("tls-proxy-large", backend.addr, "");
    let mut client = https.connect("default.test");
    client.send(b"GET /big HTTP/1.1\r\nHost: default.test\r\n\r\n");
    let mut first = [0u8; 12];
    client.tls.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // Reading nothing more: the socket buffers and rustls' bounded one fill, then pibl stops
    // reading the backend, long before the whole body is written.
    let stalled = common::wait_until_stalled("the backend is held back", &written);
    assert!(
        stalled < (ceiling + common::PROXY_HOLDS_AT_MOST) as u64,
        "the backend wrote {stalled} of {total} bytes (kernel buffers: {ceiling}) to a client reading nothing"
    );

    let body = common::read_body_after(&mut client.tls, &first, total);
    assert!(body == pattern(total), "the body changed on the way");
    // The connection is still good for another request.
    assert_eq!(client.get("/again", "default.test").status, 200);
}

#[test]
fn sni_chooses_the_certificate_and_sighup_swaps_it_for_new_handshakes_only() {
    let backend = TestBackend::named("app");
    let https = Https::start("tls-proxy-sni", backend.addr, "");
    let read_leaf = |name: &str| first_der(&std::fs::read_to_string(https.dir.0.join(name)).unwrap());
    let mut shop = https.connect("shop.test");
    assert_eq!(shop.leaf(), read_leaf("shop.crt"));
    assert_eq!(shop.get("/", "shop.test").text(), "app");
    let mut default = https.connect("default.test");
    assert_eq!(default.leaf(), read_leaf("default.crt"));
    let mut no_sni = https.ca.client();
    no_sni.enable_sni = false;
    assert_eq!(Tls::connect(https.tls, no_sni, "default.test").leaf(), read_leaf("default.crt"));

    // A renewed shop certificate, then SIGHUP: new handshakes get it, the open connection goes on.
    let old = shop.leaf();
    https.ca.leaf(&["shop.test"]).write(&https.dir.0, "shop");
    https.proxy.signal("HUP");
    common::wait_until("new handshakes get the new certificate", || {
        https.connect("shop.test").leaf() == read_leaf("shop.crt")
    });
    assert_ne!(read_leaf("shop.crt"), old);
    assert_eq!(shop.get("/", "shop.test").text(), "app", "the open connection keeps its session");
    assert_eq!(shop.leaf(), old);
    assert_eq!(default.get("/", "default.test").text(), "app");
}

#[test]
fn clients_that_do_not_finish_a_handshake_are_counted_and_the_loops_serve_on() {
    let backend = TestBackend::named("app");
    let https = Https::start("tls-proxy-bad", backend.addr, "header_timeout = 1");

    // Plain HTTP to the TLS port: refused by rustls (an alert, then the close).
    let mut plain = TcpStream::connect(https.tls).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: default.test\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "no HTTP answer on the TLS port");
    common::wait_until("the refused handshake is counted", || https.handshake_failures("refused") == 1);

    // Half a ClientHello, then the client goes away.
    let name = ServerName::try_from("default.test").unwrap();
    let mut hello = Vec::new();
    ClientConnection::new(Arc::new(https.ca.client()), name).unwrap().write_tls(&mut hello).unwrap();
    let mut half = TcpStream::connect(https.tls).unwrap();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    drop(half);
    common::wait_until("the half handshake is counted", || https.handshake_failures("closed") == 1);

    // Connects and sends nothing: closed once header_timeout passes.
    let mut silent = TcpStream::connect(https.tls).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    assert!(matches!(silent.read(&mut [0u8; 16]), Ok(0) | Err(_)), "closed, not left open");
    common::wait_until("the expired handshake is counted", || https.handshake_failures("timeout") == 1);

    // 1,000 half-open handshakes at once; the loops still serve a whole request meanwhile.
    let stuck: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(https.tls).unwrap();
            s.write_all(&hello[..10]).unwrap();
            s
        })
        .collect();
    assert_eq!(https.connect("default.test").get("/", "default.test").text(), "app");

    // Garbage after a finished handshake: that connection closes, the others do not notice.
    let mut garbage = https.connect("default.test");
    garbage.tls.sock.write_all(b"\x17\x03\x03\x00\x05hello").unwrap();
    assert!(garbage.read_response().is_err(), "a record that does not decrypt ends the connection");
    assert_eq!(https.connect("shop.test").get("/", "shop.test").text(), "app");
    drop(stuck);
    // Each counted once, closed by the client or by the deadline, whichever came first.
    common::wait_until("the 1,000 half-open handshakes are counted", || {
        https.handshake_failures("closed") + https.handshake_failures("timeout") == 1002
    });
    assert_eq!(https.metric("pibl_panics_total "), 0);
}

#[test]
fn a_websocket_over_tls_echoes_through_the_tunnel() {
    let backend = common::WsBackend::start(None);
    let https = Https::start("tls-proxy-ws", backend.addr, "hsts = 1h");
    let client = https.connect("default.test");
    let (mut ws, res) = tungstenite::client("ws://default.test/ws", client.tls).expect("upgrade over TLS");
    assert_eq!(res.status().as_u16(), 101);
    for i in 0..10 {
        let text = format!("hello {i}");
        ws.send(tungstenite::Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap().to_text().unwrap(), text);
    }
    let big = pattern(300_000);
    ws.send(tungstenite::Message::binary(big.clone())).unwrap();
    assert!(ws.read().unwrap().into_data()[..] == big[..], "a large message changed on the way");
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    assert_eq!(backend.tunnels.load(Ordering::SeqCst), 1);
    common::wait_until("the tunnel is counted", || https.metric("pibl_tunnels_total ") == 1);
}

#[test]
fn https_redirect_answers_plain_requests_with_308_but_not_acme_challenges() {
    let backend = TestBackend::start(|_| ok("from the backend"));
    let https = Https::start("tls-proxy-redirect", backend.addr, "https_redirect = on\nhsts = 1h");
    let r = common::request(https.proxy.addr, b"GET /shop?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert_eq!(r.status, 308);
    let location = format!("https://example.test:{}/shop?x=1", https.tls.port());
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(r.header("strict-transport-security"), None, "never over plain HTTP");
    // Without ACME in pibl a challenge is a backend's own: forwarded, not redirected.
    let r = common::get(https.proxy.addr, "/.well-known/acme-challenge/token");
    assert_eq!((r.status, r.text().as_str()), (200, "from the backend"));
    // The TLS port itself serves, and says HSTS.
    let r = https.connect("default.test").get("/shop", "example.test");
    assert_eq!((r.status, r.header("strict-transport-security")), (200, Some("max-age=3600")));
    assert_eq!(backend.requests(), 2);
}

#[test]
fn sighup_turns_on_the_redirect_and_hsts_without_a_restart() {
    let backend = TestBackend::start(|_| ok("from the backend"));
    let https = Https::start("tls-proxy-redirect-reload", backend.addr, "https_redirect = off\nhsts = 0");
    let plain = || common::request(https.proxy.addr, b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert_eq!(plain().status, 200, "no redirect yet");
    let mut open = https.connect("default.test");
    assert_eq!(open.get("/a", "example.test").header("strict-transport-security"), None);

    let file = https.dir.0.join("parser.ini");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replace("https_redirect = off\nhsts = 0", "https_redirect = on\nhsts = 2h");
    std::fs::write(&file, text).unwrap();
    https.proxy.signal("HUP");
    common::wait_until("the reload turns the redirect on", || plain().status == 308);
    let location = format!("https://example.test:{}/a", https.tls.port());
    assert_eq!(plain().header("location"), Some(location.as_str()));
    // New TLS connections carry HSTS; one opened before the reload keeps what it started with.
    let r = https.connect("default.test").get("/a", "example.test");
    assert_eq!(r.header("strict-transport-security"), Some("max-age=7200"));
    assert_eq!(open.get("/a", "example.test").header("strict-transport-security"), None);
    let log = std::fs::read_to_string(https.dir.0.join("proxy.stderr")).unwrap();
    assert!(!log.contains("a restart applies"), "both keys are applied by the reload: {log}");
}

#[test]
fn openssl_is_refused_tls_1_1_and_served_tls_1_2() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not installed: TLS 1.1 refusal checked by rustls having none");
        return;
    }
    let backend = TestBackend::named("app");
    let https = Https::start("tls-proxy-openssl", backend.addr, "");
    let s_client = |flag: &str| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &https.tls.to_string(), "-servername", "default.test", flag])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success() && !text.contains("Cipher is (NONE)"), text)
    };
    let (ok, text) = s_client("-tls1_2");
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 refused: {text}");
    let (ok, text) = s_client("-tls1_1");
    assert!(!ok, "TLS 1.1 accepted: {text}");
    common::wait_until("the TLS 1.1 attempt is counted", || https.handshake_failures("refused") >= 1);
}

#[test]
fn curl_with_cacert_gets_the_page_over_https_and_the_hsts_header() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed (apt-get install curl): .ci/run installs it");
    }
    let backend = echo_backend();
    let https = Https::start("tls-proxy-curl", backend.addr, "hsts = 1h\n");
    let ca = https.dir.file("ca.pem", &https.ca.pem);
    let port = https.tls.port();
    let curl = |name: &str| {
        std::process::Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{name}:{port}:127.0.0.1"), &format!("https://{name}:{port}/page")])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("curl runs")
    };
    // SNI picks each name's certificate, which curl checks against the CA and the name.
    for name in ["default.test", "shop.test"] {
        let out = curl(name);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "curl {name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("you asked for /page"), "{text}");
        assert!(text.to_ascii_lowercase().contains("strict-transport-security: max-age=3600"), "{text}");
    }
    // A name no certificate is for: the default certificate, which curl refuses for that name.
    let out = curl("other.test");
    assert!(!out.status.success(), "curl accepted a certificate for another name");
}
