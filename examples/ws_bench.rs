//! WebSocket echo benchmark for `bench/ws-bench.sh`: an echo origin and a load client.
//!
//! `ws_bench echo 127.0.0.1:PORT` answers every WebSocket message with the same message (a thread
//! per connection, so the origin is never the loop under test).
//! `ws_bench load ws://127.0.0.1:PORT/path CONNS SECONDS SIZE` opens CONNS WebSockets, each sending
//! a SIZE-byte binary message and waiting for its echo, again and again for SECONDS; it prints one
//! JSON line: messages echoed per second, latency p50/p99/max in microseconds, errors. One message
//! in flight per connection, like wrk's one request in flight per connection.
//!
//! Loopback only; every loop is bounded by the duration.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["echo", addr] => echo(addr),
        ["load", url, conns, seconds, size] => load(url, conns, seconds, size),
        _ => Err("usage: ws_bench echo HOST:PORT | ws_bench load ws://HOST:PORT/PATH CONNS SECONDS SIZE".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws_bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn loopback(addr: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    Ok(addr)
}

fn echo(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(loopback(addr)?).map_err(|e| format!("bind {addr}: {e}"))?;
    for stream in listener.incoming().flatten() {
        let _ = thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tungstenite::accept(stream) else { return };
            while let Ok(message) = ws.read() {
                let echoed = match message {
                    Message::Binary(_) | Message::Text(_) => ws.send(message),
                    Message::Close(_) => break,
                    _ => Ok(()),
                };
                if echoed.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

struct ConnResult {
    latencies_us: Vec<u32>,
    errors: u64,
}

fn load(url: &str, conns: &str, seconds: &str, size: &str) -> Result<(), String> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or("the URL must be ws://HOST:PORT/...")?;
    let addr = loopback(host)?;
    let conns: usize = conns.parse().map_err(|e| format!("CONNS: {e}"))?;
    let duration = Duration::from_secs_f64(seconds.parse::<f64>().map_err(|e| format!("SECONDS: {e}"))?);
    let size: usize = size.parse().map_err(|e| format!("SIZE: {e}"))?;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();

    // Every connection is open before the clock starts.
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connection {i}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client(url, stream).map_err(|e| format!("handshake {i}: {e}"))?;
        sockets.push(ws);
    }
    let start = Arc::new(Barrier::new(conns + 1));
    let workers: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            let (start, payload) = (Arc::clone(&start), payload.clone());
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || run_connection(ws, &start, duration, payload))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    start.wait();
    let began = Instant::now();
    let results: Vec<ConnResult> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
    let elapsed = began.elapsed().as_secs_f64();

    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let mut latencies: Vec<u32> = results.into_iter().flat_map(|r| r.latencies_us).collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    println!(
        "{{\"messages\":{},\"seconds\":{elapsed:.3},\"msgs_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"errors\":{errors},\"conns\":{conns},\"size\":{size}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

fn run_connection(mut ws: WebSocket<TcpStream>, start: &Barrier, duration: Duration, payload: Vec<u8>) -> ConnResult {
    let mut result = ConnResult { latencies_us: Vec::with_capacity(16 * 1024), errors: 0 };
    start.wait();
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let sent = Instant::now();
        if ws.send(Message::binary(payload.clone())).is_err() {
            result.errors += 1;
            break;
        }
        match ws.read() {
            Ok(Message::Binary(echoed)) if echoed.len() == payload.len() => {
                result.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok(_) | Err(_) => {
                result.errors += 1;
                break;
            }
        }
    }
    let _ = ws.close(None);
    result
}
