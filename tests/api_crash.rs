//! `kill -9` keeps what was acknowledged: the real `proxy` binary is started on a fresh database,
//! answers a registration and an app, is killed with SIGKILL, and a new process finds both.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

use common::*;

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Proxy(Child);

impl Proxy {
    fn start(ini: &std::path::Path, api: SocketAddr) -> Proxy {
        let child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--config", ini.to_str().expect("UTF-8 path"), "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start proxy");
        wait_until("the API accepts connections", || TcpStream::connect(api).is_ok());
        Proxy(child)
    }

    fn kill_9(mut self) {
        self.0.kill().expect("SIGKILL");
        let _ = self.0.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_changes_survive_kill_9() {
    let backend = TestBackend::named("kept");
    let db = TempDb::new("crash");
    let ini = std::env::temp_dir().join(format!("pibl-crash-{}.ini", std::process::id()));
    let (port, api_port) = (free_port(), free_port());
    std::fs::write(
        &ini,
        format!(
            "[DEFAULT]\nbind = 127.0.0.1\nport = {port}\napi_port = {api_port}\ndatabase = {}\n\
             access_log = off\nip_server1 = {}\n",
            db.0.display(),
            backend.addr
        ),
    )
    .expect("write ini");
    let (proxy_addr, api_addr) =
        (SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from(([127, 0, 0, 1], api_port)));

    let first = Proxy::start(&ini, api_addr);
    let token = register_and_login(api_addr, "crash@x.io");
    let res = api(api_addr, "POST", "/api/apps/survivor", Some(&token), Some(&endpoint_body(backend.addr, "/")));
    assert_eq!(res.status, 201, "{}", res.text());
    first.kill_9();

    let _second = Proxy::start(&ini, api_addr);
    let res = api(api_addr, "GET", "/api/apps/survivor", Some(&token), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["owner"], "crash@x.io");
    assert_eq!(get(proxy_addr, "/survivor/").text(), "kept");
    let _ = std::fs::remove_file(&ini);
}
