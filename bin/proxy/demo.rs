//! Demo backends for `proxy --demo`: tiny HTTP/1.1 servers on loopback that answer with their name,
//! port and request count, so reloading a page through pibl shows the balancing at work. They also
//! answer `/status` (for health checks) and `/favicon.ico` (a real icon, cacheable for a day).

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

/// Starts `demo-1`, `demo-2`, ... on `127.0.0.1` at `ports`. A port that is taken falls back to one
/// the system picks, with a warning that says which (the README's examples name the usual ports).
pub fn start_all(ports: &[u16]) -> io::Result<(Vec<DemoBackend>, Vec<String>)> {
    let (mut backends, mut warnings) = (Vec::new(), Vec::new());
    for (i, &port) in ports.iter().enumerate() {
        let name = format!("demo-{}", i + 1);
        let backend = match DemoBackend::start(&name, port) {
            Ok(backend) => backend,
            Err(e) if port != 0 && e.kind() == io::ErrorKind::AddrInUse => {
                let backend = DemoBackend::start(&name, 0)?;
                warnings.push(format!(
                    "demo: port {port} is taken by another program, so {name} listens on {} instead: \
                     use port {} wherever the README says {port}",
                    backend.addr(),
                    backend.addr().port()
                ));
                backend
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{name} on 127.0.0.1:{port}: {e}"))),
        };
        backends.push(backend);
    }
    Ok((backends, warnings))
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
        // The pages say `no-store`, so every reload reaches a backend and shows the round-robin; the
        // icon may be kept a day, by browsers and by pibl's cache.
        let (content_type, cache_control, body) = match req.target() {
            "/status" => ("text/plain; charset=utf-8", "no-store", b"ok\n".to_vec()),
            "/favicon.ico" => ("image/x-icon", "public, max-age=86400", favicon()),
            target => {
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                ("text/html; charset=utf-8", "no-store", page(name, addr, n, req.method(), target).into_bytes())
            }
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: {cache_control}\r\n\
             X-Demo-Backend: {name}\r\n{}\r\n",
            body.len(),
            if req.keep_alive { "" } else { "Connection: close\r\n" },
        );
        let mut response = head.into_bytes();
        if !req.is_head() {
            response.extend_from_slice(&body);
        }
        stream.write_all(&response)?;
        if !req.keep_alive {
            return Ok(());
        }
    }
}

/// A 16x16 icon in the ICO format (one 32-bit BMP image): a blue disc with a white ring, drawn
/// here rather than shipped as a file.
fn favicon() -> Vec<u8> {
    const SIZE: u32 = 16;
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 4) as usize);
    // BMP rows run bottom to top; the disc is symmetric, so the order does not show.
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (dx, dy) = (x as f32 - 7.5, y as f32 - 7.5);
            let r = (dx * dx + dy * dy).sqrt();
            let bgra: [u8; 4] = match r {
                r if r < 3.5 => [0xd0, 0x70, 0x1f, 0xff],
                r if r < 5.0 => [0xff, 0xff, 0xff, 0xff],
                r if r < 7.8 => [0xd0, 0x70, 0x1f, 0xff],
                _ => [0, 0, 0, 0],
            };
            pixels.extend_from_slice(&bgra);
        }
    }
    let mask = vec![0u8; (SIZE * 4) as usize]; // 1 bit a pixel, rows padded to 4 bytes; alpha decides
    let image_len = 40 + pixels.len() + mask.len();
    let mut ico = Vec::with_capacity(22 + image_len);
    ico.extend_from_slice(&[0, 0, 1, 0, 1, 0]); // reserved, type 1 (icon), one image
    ico.extend_from_slice(&[SIZE as u8, SIZE as u8, 0, 0, 1, 0, 32, 0]); // 16x16, no palette, 1 plane, 32 bpp
    ico.extend_from_slice(&(image_len as u32).to_le_bytes());
    ico.extend_from_slice(&22u32.to_le_bytes()); // the image follows this 6 + 16 byte directory
                                                 // BITMAPINFOHEADER; the height counts the image and its mask.
    ico.extend_from_slice(&40u32.to_le_bytes());
    ico.extend_from_slice(&SIZE.to_le_bytes());
    ico.extend_from_slice(&(SIZE * 2).to_le_bytes());
    ico.extend_from_slice(&1u16.to_le_bytes());
    ico.extend_from_slice(&32u16.to_le_bytes());
    ico.extend_from_slice(&[0; 24]); // no compression; sizes and palette left to the reader
    ico.extend_from_slice(&pixels);
    ico.extend_from_slice(&mask);
    ico
}

fn page(name: &str, addr: SocketAddr, n: u64, method: &str, target: &str) -> String {
    let target = target.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pibl demo: {name}</title>\n\
         <link rel=\"icon\" href=\"/favicon.ico\"></head>\n\
         <body style=\"font-family: sans-serif; margin: 3em\">\n\
         <h1>Served by {name}</h1>\n\
         <p>backend {name} on port {port} &middot; request #{n} &middot; {method} {target}</p>\n\
         <p>Reload the page: pibl sends each request to the next backend, round-robin.</p>\n\
         </body></html>\n",
        port = addr.port()
    )
}
