//! Demo backends for `proxy --demo`: tiny HTTP/1.1 servers on loopback that answer with their name,
//! port and request count, so reloading a page through pibl shows the balancing at work.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pibl::http::body::{self, Encoding, Source};
use pibl::http::buffer::{ReadBuf, WriteBatch};
use pibl::http::request::{self, Limits};

/// Connections one demo backend serves at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
const LIMITS: Limits = Limits { max_head_bytes: 16 * 1024, max_headers: 100, max_body_bytes: 64 * 1024 * 1024 };

/// A running demo backend; it stops when dropped.
pub struct DemoBackend {
    pub name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DemoBackend {
    /// Starts a backend called `name` on `127.0.0.1:port` (0 picks a free port).
    pub fn start(name: &str, port: u16) -> io::Result<DemoBackend> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (thread_name, counter, stopped) = (name.to_string(), requests, Arc::clone(&stop));
        thread::Builder::new().name(format!("demo-{name}")).spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue;
                }
                open.fetch_add(1, Ordering::Relaxed);
                let (name, counter, open) = (thread_name.clone(), Arc::clone(&counter), Arc::clone(&open));
                let spawned = thread::Builder::new().spawn(move || {
                    let _ = serve(stream, &name, addr, &counter);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    log::warn!("demo backend {thread_name}: cannot start a connection thread");
                }
            }
        })?;
        Ok(DemoBackend { name: name.to_string(), addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        pibl::server::wake::wake_acceptor(self.addr);
    }
}

fn serve(mut stream: TcpStream, name: &str, addr: SocketAddr, counter: &AtomicU64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = ReadBuf::new();
    let (mut scratch, mut sink) = (Vec::new(), io::sink());
    loop {
        let req = loop {
            if !buf.is_empty() {
                match request::parse(buf.filled(), &LIMITS) {
                    Ok(Some((req, len))) => {
                        buf.consume(len);
                        break req;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let msg = format!("{e}\n");
                        let head = format!(
                            "HTTP/1.1 {} Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            e.status(),
                            msg.len()
                        );
                        stream.write_all(head.as_bytes())?;
                        return stream.write_all(msg.as_bytes());
                    }
                }
            }
            if buf.fill_from(&mut stream, 8192, LIMITS.max_head_bytes)? == 0 {
                return Ok(());
            }
        };
        {
            let mut src = Source { buf: &mut buf, sock: &mut stream, step: 8192 };
            let mut discard = WriteBatch::new(&mut scratch, &mut sink, 8192);
            if body::transfer(&mut src, req.framing, &mut discard, Encoding::Identity, LIMITS.max_body_bytes).is_err() {
                return Ok(());
            }
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let (content_type, page) = if req.target() == "/status" {
            ("text/plain; charset=utf-8", "ok\n".to_string())
        } else {
            ("text/html; charset=utf-8", page(name, addr, n, req.method(), req.target()))
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Demo-Backend: {name}\r\n{}\r\n",
            page.len(),
            if req.keep_alive { "" } else { "Connection: close\r\n" },
        );
        let mut response = head.into_bytes();
        if !req.is_head() {
            response.extend_from_slice(page.as_bytes());
        }
        stream.write_all(&response)?;
        if !req.keep_alive {
            return Ok(());
        }
    }
}

fn page(name: &str, addr: SocketAddr, n: u64, method: &str, target: &str) -> String {
    let target = target.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pibl demo: {name}</title></head>\n\
         <body style=\"font-family: sans-serif; margin: 3em\">\n\
         <h1>Served by {name}</h1>\n\
         <p>backend {name} on port {port} &middot; request #{n} &middot; {method} {target}</p>\n\
         <p>Reload the page: pibl sends each request to the next backend, round-robin.</p>\n\
         </body></html>\n",
        port = addr.port()
    )
}
