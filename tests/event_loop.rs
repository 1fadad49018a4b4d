//! What the event loops add or must hold on their own: back-pressure toward a
//! client that stops reading, WebSocket tunnels against a real WebSocket server (echo, close
//! handshake, a backend dying mid-tunnel, a thousand at once on two loops while plain requests are
//! served), timeouts, and connections dropped in every state.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::*;
use pibl::config::Config;
use pibl::Server;
use tungstenite::{Error as WsError, Message, WebSocket};

#[test]
fn a_client_that_stops_reading_holds_back_the_backend() {
    // Far more than the kernel's buffers can hold, so what pibl keeps back shows.
    let ceiling = kernel_buffer_ceiling();
    let total = ceiling + (32 << 20);
    let (backend, written) = counting_backend(total);
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut client = TcpStream::connect(proxy.local_addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    client.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // The client reads nothing more: socket buffers fill up, then pibl stops reading the backend,
    // which blocks long before it has written the whole body.
    let stalled = wait_until_stalled("the backend is held back", &written);
    assert!(
        stalled < (ceiling + PROXY_HOLDS_AT_MOST) as u64,
        "the backend wrote {stalled} of {total} bytes (kernel buffers: {ceiling}) to a client that reads nothing"
    );

    // Reading again, the client gets every byte, in order.
    let body = read_body_after(&mut client, &first, total);
    assert!(body == pattern(total), "the body changed on the way");
}

fn ws_connect(proxy: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, res) = tungstenite::client(format!("ws://{proxy}/ws"), stream).expect("WebSocket handshake through pibl");
    assert_eq!(res.status().as_u16(), 101);
    ws
}

fn metric(proxy: &Server, name: &str) -> u64 {
    let shared = proxy.probe().shared().expect("server running");
    match name {
        "tunnels" => shared.metrics.tunnels.load(Ordering::SeqCst),
        "down" => shared.metrics.tunnel_bytes_down.load(Ordering::SeqCst),
        _ => unreachable!(),
    }
}

#[test]
fn websocket_echo_and_close_handshake() {
    let backend = WsBackend::start(None);
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut ws = ws_connect(proxy.local_addr());
    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap().to_text().unwrap(), text);
    }
    let big = pattern(300_000);
    ws.send(Message::binary(big.clone())).unwrap();
    assert!(ws.read().unwrap().into_data()[..] == big[..], "a large binary message changed on the way");

    // The close handshake passes through both ways.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(WsError::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    drop(ws);
    wait_until("the tunnel is counted", || metric(&proxy, "tunnels") == 1);
    assert!(metric(&proxy, "down") > 300_000);
    assert_eq!(get(proxy.local_addr(), "/plain").status, 200, "plain requests still served");
}

#[test]
fn a_backend_dying_mid_tunnel_closes_the_client() {
    let backend = WsBackend::start(Some(1));
    let proxy = start_proxy(test_config(&[backend.addr]));
    let mut ws = ws_connect(proxy.local_addr());
    ws.send(Message::text("one")).unwrap();
    assert_eq!(ws.read().unwrap().to_text().unwrap(), "one");
    // The backend is gone: the client sees its connection end, not a hang.
    let _ = ws.send(Message::text("two"));
    let ended = loop {
        match ws.read() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(ended, WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Protocol(_) | WsError::Io(_)),
        "{ended}"
    );
    wait_until("the tunnel is closed and counted", || metric(&proxy, "tunnels") == 1);
    wait_until("the client connection is released", || proxy.stats().open_connections == 0);
    assert_eq!(get(proxy.local_addr(), "/plain").status, 200);
}

#[test]
fn a_thousand_websockets_on_two_loops_while_plain_requests_are_served() {
    let backend = WsBackend::start(None);
    let mut config = test_config(&[backend.addr]);
    config.threads = 2;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();
    let mut sockets = Vec::with_capacity(1000);
    for i in 0..1000 {
        sockets.push(ws_connect(addr));
        if i % 100 == 99 {
            assert_eq!(get(addr, "/plain").status, 200, "plain request with {} WebSockets open", i + 1);
        }
    }
    // The backend counts a tunnel after its 101 is written, so the client may read the 101 first.
    wait_until("the backend counts 1,000 tunnels", || backend.tunnels.load(Ordering::SeqCst) == 1000);
    // Every tunnel is alive and carries its own messages.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("#{i}"))).unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap().to_text().unwrap(), format!("#{i}"));
    }
    assert_eq!(get(addr, "/plain").status, 200);
    wait_until("only the tunnels are open", || proxy.stats().open_connections == 1000);
    drop(sockets);
    wait_until("every tunnel is closed", || proxy.stats().open_connections == 0);
}

#[test]
fn a_burst_of_connections_is_spread_evenly_over_the_loops() {
    let backend = TestBackend::named("b");
    let proxy = start_proxy(Config { threads: 2, ..test_config(&[backend.addr]) });
    // 64 connections at once, as a load generator opens them: whichever loop wakes first accepts
    // them all, and hands those beyond its share to the other.
    let mut clients: Vec<TcpStream> =
        (0..64).map(|_| TcpStream::connect(proxy.local_addr()).expect("connect")).collect();
    for client in &mut clients {
        client.write_all(b"GET /spread HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    for client in &mut clients {
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 12];
        client.read_exact(&mut head).expect("an answer on every connection");
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let loads = proxy.loop_loads();
    assert_eq!(loads.iter().sum::<usize>(), 64, "{loads:?}");
    assert!(loads[0].abs_diff(loads[1]) <= 2, "one loop took more than its share: {loads:?}");
    drop(clients);
    wait_until("the loops count the closed connections", || proxy.loop_loads() == [0, 0]);
}

#[test]
fn the_cache_answers_hits_without_the_backend() {
    let backend = TestBackend::start(|_| {
        Reply::Raw(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello".to_vec())
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let first = get(proxy.local_addr(), "/c");
    assert_eq!((first.status, first.header("x-cache")), (200, Some("MISS")));
    for _ in 0..5 {
        let hit = get(proxy.local_addr(), "/c");
        assert_eq!((hit.status, hit.header("x-cache"), hit.text().as_str()), (200, Some("HIT"), "hello"));
    }
    assert_eq!(backend.requests(), 1);
}

#[test]
fn a_client_that_stops_reading_is_closed_after_client_timeout() {
    let backend = TestBackend::start(|_| {
        Reply::With(Box::new(|stream: &mut TcpStream| {
            let body = pattern(16 << 20);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }))
    });
    let mut config = test_config(&[backend.addr]);
    config.client_timeout = Duration::from_millis(500);
    let proxy = start_proxy(config);
    let mut client = TcpStream::connect(proxy.local_addr()).unwrap();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    client.read_exact(&mut first).unwrap();
    // Never reads again: the connection is given up, not held (or buffered) forever.
    wait_until("the stalled client is closed", || proxy.stats().open_connections == 0);
    assert_eq!(get(proxy.local_addr(), "/small").status, 200);
}

/// A backend that reads the request head, then nothing more, and never answers.
fn deaf_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head);
            held.push(stream);
        }
    });
    addr
}

#[test]
fn a_backend_that_stops_reading_mid_upload_gives_504() {
    let mut config = test_config(&[deaf_backend()]);
    config.backend_timeout = Duration::from_millis(500);
    let proxy = start_proxy(config);
    let mut client = TcpStream::connect(proxy.local_addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    const BODY: usize = 8 << 20;
    client.write_all(format!("PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n").as_bytes()).unwrap();
    let mut writer = client.try_clone().unwrap();
    // Uploads until pibl stops taking bytes, and on once it discards them after answering.
    let uploader = thread::spawn(move || {
        let body = pattern(BODY);
        let _ = writer.write_all(&body);
    });
    let mut reader = Client::from_stream(client);
    let res = reader.read_response(false).expect("an answer, not a reset");
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.header("connection"), Some("close"));
    drop(reader);
    uploader.join().unwrap();
    wait_until("the connection is released", || proxy.stats().open_connections == 0);
}

#[test]
fn connections_opened_and_dropped_at_random_harm_nobody() {
    let backend = TestBackend::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".iter().copied().chain(pattern(100_000)).collect(),
        )
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let addr = proxy.local_addr();
    let mut state = 0x2545_f491_u32;
    for i in 0..2000 {
        // xorshift: a fixed, reproducible mix of ways to go away.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let mut stream = TcpStream::connect(addr).unwrap();
        let _ = match state % 5 {
            0 => Ok(()),
            1 => stream.write_all(b"GET / HT"),
            2 => stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"),
            3 => stream.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nhalf"),
            _ => stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .and_then(|()| stream.read(&mut [0u8; 100]).map(drop)),
        };
        drop(stream);
        if i % 250 == 0 {
            assert_eq!(get(addr, "/").status, 200);
        }
    }
    assert_eq!(get(addr, "/").status, 200);
    wait_until("every dropped connection is released", || proxy.stats().open_connections == 0);
}

#[test]
fn idle_keep_alive_connections_close_after_keepalive_timeout() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.keepalive_timeout = Duration::from_millis(300);
    let proxy = start_proxy(config);
    let mut client = Client::connect(proxy.local_addr());
    assert_eq!(client.get("/").status, 200);
    wait_until("the idle connection is closed", || proxy.stats().open_connections == 0);
    assert!(client.is_closed());
}

#[test]
fn an_idle_tunnel_closes_after_tunnel_timeout() {
    let backend = WsBackend::start(None);
    let mut config = test_config(&[backend.addr]);
    config.tunnel_timeout = Duration::from_millis(300);
    let proxy = start_proxy(config);
    let mut ws = ws_connect(proxy.local_addr());
    ws.send(Message::text("ping")).unwrap();
    assert_eq!(ws.read().unwrap().to_text().unwrap(), "ping");
    wait_until("the idle tunnel is closed", || proxy.stats().open_connections == 0);
    assert!(ws.read().is_err(), "the client sees the tunnel end");
    assert_eq!(metric(&proxy, "tunnels"), 1);
}
