//! Connection handling under pressure: idle keep-alive connections parked off the workers, slowloris
//! clients cut off by the header timeout, `max_conn`, and graceful shutdown.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_thousand_idle_keep_alive_connections_do_not_hold_four_workers() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.threads = 4;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    let mut idle: Vec<Client> = (0..1000)
        .map(|_| {
            let mut client = Client::connect(addr);
            assert_eq!(client.get("/").status, 200);
            client
        })
        .collect();
    wait_until("all 1000 connections are parked", || proxy.stats().parked_connections >= 1000);

    // Four workers, a thousand open connections: a newcomer is still served at once.
    assert_eq!(get(addr, "/").status, 200);

    // And every idle connection is still open and usable.
    for client in idle.iter_mut() {
        assert_eq!(client.get("/").status, 200);
    }
    assert_eq!(proxy.stats().open_connections, 1000);
    assert_eq!(backend.requests(), 2001);
}

#[test]
fn slowloris_clients_are_cut_off_and_do_not_stop_service() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.threads = 4;
    config.header_timeout = Duration::from_millis(800);
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();

    let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut slow: Vec<Option<TcpStream>> = (0..200)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let mut sent = 0;
    let mut served_meanwhile = 0;
    // Dribble one byte per connection per round until every slow connection has been cut off.
    while slow.iter().any(Option::is_some) {
        assert!(started.elapsed() < WAIT, "slow connections were not cut off");
        assert!(sent < head.len() - 1, "a slow client managed to send its whole head");
        for slot in slow.iter_mut() {
            let Some(stream) = slot else { continue };
            let mut byte = [0u8; 256];
            let closed = match stream.read(&mut byte) {
                Ok(_) => true, // EOF, or the 408 before the close
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if closed || stream.write(&head[sent..sent + 1]).is_err() {
                *slot = None;
            }
        }
        sent += 1;
        // Normal clients keep being served while the slow ones hold their connections.
        assert_eq!(get(addr, "/").status, 200);
        served_meanwhile += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served_meanwhile > 0);
    assert_eq!(backend.requests(), served_meanwhile, "no slow request reached the backend");
    wait_until("the slow connections are released", || proxy.stats().open_connections == 0);
}

#[test]
fn max_conn_holds_extra_clients_in_the_backlog() {
    let backend = TestBackend::named("b");
    let mut config = test_config(&[backend.addr]);
    config.max_conn = 2;
    let proxy = start_proxy(config);
    let addr = proxy.local_addr();
    let mut first = Client::connect(addr);
    let mut second = Client::connect(addr);
    assert_eq!(first.get("/").status, 200);
    assert_eq!(second.get("/").status, 200);

    // The third connection completes in the kernel's backlog, but is not served while two are open.
    let mut third = Client::connect(addr);
    third.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    third.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    let waited = third.stream.read(&mut byte);
    assert!(waited.is_err(), "the third client must wait while max_conn connections are open");
    third.stream.set_read_timeout(Some(WAIT)).unwrap();

    drop(first);
    let res = third.read_response(false).expect("served once a slot frees");
    assert_eq!(res.status, 200);
}

#[test]
fn shutdown_lets_in_flight_requests_finish_and_closes_idle_ones() {
    let backend = TestBackend::start(|req| {
        if req.target == "/slow" {
            thread::sleep(Duration::from_millis(500));
        }
        ok("done")
    });
    let proxy = start_proxy(test_config(&[backend.addr]));
    let addr = proxy.local_addr();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/").status, 200);
    wait_until("the idle connection is parked", || proxy.stats().parked_connections == 1);

    let mut busy = Client::connect(addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the slow request reaches the backend", || backend.requests() == 2);

    let stopper = thread::spawn(move || proxy.shutdown());
    let res = busy.read_response(false).expect("the in-flight request completes");
    assert_eq!((res.status, res.text().as_str()), (200, "done"));
    assert_eq!(res.header("connection"), Some("close"));
    assert!(idle.is_closed(), "idle connections are closed at shutdown");
    assert!(stopper.join().unwrap(), "shutdown finished within the grace period");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}
