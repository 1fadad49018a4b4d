//! TLS test helpers shared by `tls.rs` and `acme.rs`: certificates made now with `rcgen`, a tiny TLS
//! listener that serves one exchange per connection with a given `ServerConfig`, and a client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// A test certificate authority.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> TestCert {
        self.leaf_with(names, |_| {})
    }

    /// A leaf for `names` after `adjust` changed its parameters (validity...).
    pub fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> TestCert {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        // The chain as servers send it: the leaf, then the CA.
        TestCert { cert_pem: format!("{}{}", cert.pem(), self.pem), key_pem: key.serialize_pem() }
    }

    /// A client trusting only this CA.
    pub fn client(&self) -> ClientConfig {
        client_trusting(self.pem.as_bytes())
    }
}

impl TestCert {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A client (TLS 1.2 and 1.3, ALPN http/1.1) trusting the certificates in `pem`.
pub fn client_trusting(pem: &[u8]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A TLS listener on loopback: each connection completes the handshake, then answers every line it
/// reads with `echo: LINE`, until the client closes. Runs until the test process ends.
pub struct TestListener {
    pub addr: SocketAddr,
}

impl TestListener {
    pub fn start(config: Arc<ServerConfig>) -> TestListener {
        let addr = serve_tls(config, |tls| {
            let mut tls = BufReader::new(tls);
            let mut line = String::new();
            while matches!(tls.read_line(&mut line), Ok(n) if n > 0) {
                let reply = format!("echo: {line}");
                if tls.get_mut().write_all(reply.as_bytes()).and_then(|()| tls.get_mut().flush()).is_err() {
                    return;
                }
                line.clear();
            }
        });
        TestListener { addr }
    }
}

/// A TLS server on a loopback port: each connection on a thread of its own, handed to `serve` as
/// a rustls stream (the handshake completes on its first read or write). Runs until the test
/// process ends.
fn serve_tls(config: Arc<ServerConfig>, serve: fn(StreamOwned<ServerConnection, TcpStream>)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a TLS listener");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let Ok(conn) = ServerConnection::new(config) else { return };
                serve(StreamOwned::new(conn, stream));
            });
        }
    });
    addr
}

/// A client connection to a TLS listener.
pub struct TlsClient {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects and completes the handshake, asking for `name` (sent as SNI unless the config turns it off).
    pub fn connect(addr: SocketAddr, config: ClientConfig, name: &str) -> Result<TlsClient, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        let conn = ClientConnection::new(Arc::new(config), name)?;
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut tls = StreamOwned::new(conn, stream);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return Err(match e.into_inner().map(|inner| inner.downcast::<rustls::Error>()) {
                    Some(Ok(tls_error)) => *tls_error,
                    _ => rustls::Error::General("handshake failed".into()),
                });
            }
        }
        Ok(TlsClient { tls })
    }

    /// The leaf certificate the server showed.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().expect("a certificate")[0].clone().into_owned()
    }

    /// Sends one line and reads the echo.
    pub fn echo(&mut self, text: &str) -> std::io::Result<String> {
        self.tls.write_all(format!("{text}\n").as_bytes())?;
        self.tls.flush()?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\n") {
            if self.tls.read(&mut byte)? == 0 {
                break;
            }
            reply.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
    }
}

/// The DER of the first certificate in a PEM text.
pub fn first_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).next().expect("a certificate").expect("PEM")
}

/// An HTTPS backend on loopback: every request on each TLS connection is answered `tls backend
/// TARGET` (or, for `/big`, [`BIG`] bytes), with keep-alive. It records the name each client asked
/// for (SNI) and counts connections.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub names: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    /// How each connection ended, as the backend read it: "close_notify" (the peer said so before
    /// closing), "truncated" (closed without it), "error", or "no handshake" (not TLS, or refused).
    pub endings: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

/// The size of `/big`'s answer.
pub const BIG: usize = 3 << 20;

impl TlsBackend {
    pub fn start(config: Arc<ServerConfig>) -> TlsBackend {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS backend");
        let addr = listener.local_addr().expect("addr");
        let backend = TlsBackend { addr, connections: Arc::default(), names: Arc::default(), endings: Arc::default() };
        let (connections, names) = (Arc::clone(&backend.connections), Arc::clone(&backend.names));
        let endings = Arc::clone(&backend.endings);
        // `/swr` answers count up, so a refreshed copy shows.
        let swr_served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, connections, names) = (Arc::clone(&config), Arc::clone(&connections), Arc::clone(&names));
                let (endings, swr_served) = (Arc::clone(&endings), Arc::clone(&swr_served));
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                    let Ok(conn) = ServerConnection::new(config) else { return };
                    let mut tls = StreamOwned::new(conn, stream);
                    while tls.conn.is_handshaking() {
                        if tls.conn.complete_io(&mut tls.sock).is_err() {
                            endings.lock().unwrap().push("no handshake");
                            return;
                        }
                    }
                    connections.fetch_add(1, Ordering::SeqCst);
                    names.lock().unwrap().push(tls.conn.server_name().map(str::to_string));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let target = head.split(' ').nth(1).unwrap_or("").to_string();
                            let body = match target.as_str() {
                                "/big" => big_body(),
                                "/swr" => {
                                    let n = swr_served.fetch_add(1, Ordering::SeqCst) + 1;
                                    format!("tls backend /swr {n}").into_bytes()
                                }
                                _ => format!("tls backend {target}").into_bytes(),
                            };
                            // `/swr`: fresh for a second, then served stale while it is refreshed.
                            let cache = match target.as_str() {
                                "/swr" => "Cache-Control: max-age=1, stale-while-revalidate=30\r\n",
                                _ => "",
                            };
                            let head = format!("HTTP/1.1 200 OK\r\n{cache}Content-Length: {}\r\n\r\n", body.len());
                            if tls.write_all(head.as_bytes()).and_then(|()| tls.write_all(&body)).is_err() {
                                return;
                            }
                        }
                        let ending = match tls.read(&mut chunk) {
                            Ok(n) if n > 0 => {
                                buf.extend_from_slice(&chunk[..n]);
                                continue;
                            }
                            // rustls reads the end of the stream as 0 only after a close_notify.
                            Ok(_) => "close_notify",
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
                            Err(_) => "error",
                        };
                        endings.lock().unwrap().push(ending);
                        return;
                    }
                });
            }
        });
        backend
    }
}

/// `/big`'s answer: [`BIG`] bytes in a pattern that shows any byte lost or moved.
pub fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// A WebSocket echo server over TLS (`wss`) on loopback; runs until the test process ends.
pub fn tls_ws_backend(config: Arc<ServerConfig>) -> SocketAddr {
    serve_tls(config, |tls| {
        let Ok(mut ws) = tungstenite::accept(tls) else { return };
        while let Ok(msg) = ws.read() {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                return;
            }
        }
    })
}
