//! Regression test: two kit-service replicas behind the nginx that
//! `deploy-kit render nginx` writes, restarted one at a time twice over while
//! clients keep calling through nginx, lose no call (issue 13: two rolling
//! restarts under four client threads lost 0 of 504 operations; this keeps it
//! that way).
//!
//! Everything runs on 127.0.0.1: Debian's nginx (installed by `.ci/test`; a
//! missing nginx fails the test), the real `kit-service` binary built next to
//! `deploy-kit`, and the Rust vgi-rpc client. The restart is what an
//! orchestrator does: SIGTERM (the service drains: in-flight calls finish,
//! then it stops), start the replacement on the same port, wait for
//! `/readyz`, and move to the next replica only once nginx sends the new one
//! traffic again (nginx marks a refusing replica down for `fail_timeout`).
//! Bounded: at most 150 s, normally about 20 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use assert_cmd::cargo::CommandCargoExt;
use kit_service::client::Client;

const PROTOCOL: &str = "kit.Demo.v1";
const CLIENTS: usize = 4;
const ROUNDS: usize = 2;
const DEADLINE: Duration = Duration::from_secs(150);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nginx` on `PATH`, or where Debian puts it.
fn nginx() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .expect("nginx is not installed: `apt-get install nginx-light` (`.ci/test` installs it)")
}

/// A plain `GET` over HTTP/1.0: the status and body, `None` when refused.
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut socket = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(socket, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `kit-service serve` on a fixed port, so nginx's upstream stays valid
/// across restarts; killed on drop.
struct Replica {
    port: u16,
    child: Child,
}

impl Replica {
    fn start(port: u16) -> Replica {
        let binary = Path::new(env!("CARGO_BIN_EXE_deploy-kit"))
            .parent()
            .unwrap()
            .join("kit-service");
        assert!(
            binary.exists(),
            "`{}` is missing: run `cargo build -p kit-service` first",
            binary.display()
        );
        // The port was just freed by the replica this one replaces; retry
        // briefly should the kernel still hold it.
        for _ in 0..20 {
            let mut child = Command::new(&binary)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .env("VGI_SIGNING_KEY", format!("hex:{}", "3c".repeat(32)))
                .env("KIT_SHUTDOWN_GRACE", "10")
                .env("KIT_LOG_FORMAT", "text")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if line.starts_with("LISTENING ") {
                return Replica { port, child };
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("kit-service could not listen on 127.0.0.1:{port}");
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGTERM, then the drain; returns how long the replica took to exit.
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the drain ends with exit 0: {status}");
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("replica on port {} did not drain within 20 s", self.port);
    }

    /// RPC calls this replica has answered so far (`kit_requests_total` of
    /// the demo protocol: probes and `/metrics` itself do not count).
    fn calls(&self) -> f64 {
        let Some((200, metrics)) = get(self.address(), "/metrics") else {
            return 0.0;
        };
        metrics
            .lines()
            .filter(|line| line.starts_with("kit_requests_total"))
            .filter(|line| line.contains(&format!("protocol=\"{PROTOCOL}\"")))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx with the rendered config; stopped on drop.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; its workers exit with the master.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(listen: u16, upstreams: [u16; 2]) -> Nginx {
    let nginx = nginx();
    let dir = tempfile::tempdir().unwrap();
    let mut render = Command::cargo_bin("deploy-kit").unwrap();
    render.current_dir(repo_root()).args([
        "render",
        "nginx",
        "--config",
        "examples/compose.yaml",
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--upstream",
        &format!("127.0.0.1:{}", upstreams[0]),
        "--upstream",
        &format!("127.0.0.1:{}", upstreams[1]),
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--plain-http",
    ]);
    let rendered = render.output().unwrap();
    assert!(
        rendered.status.success(),
        "deploy-kit render nginx: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let config = dir.path().join("nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&config)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nginx = Nginx { child, _dir: dir };
    let address = SocketAddr::from(([127, 0, 0, 1], listen));
    let started = Instant::now();
    while get(address, "/nginx-healthz").map(|(status, _)| status) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not answer /nginx-healthz within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

fn int64_params(columns: &[(&str, i64)]) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Int64, false))
        .collect();
    let arrays = columns
        .iter()
        .map(|(_, value)| Arc::new(Int64Array::from(vec![*value])) as Arc<dyn Array>)
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

fn first_int(batch: &RecordBatch) -> i64 {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

struct Load {
    started: Instant,
    operations: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn record(&self, outcome: Result<(), String>) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = outcome {
            let at = self.started.elapsed();
            self.failures
                .lock()
                .unwrap()
                .push(format!("at {at:.2?}: {error}"));
        }
    }
}

/// One client: unary calls (a quick `add`, a `sleep` held across drains).
async fn unary_client(client: Client, load: Arc<Load>, stop: Arc<AtomicBool>, index: i64) {
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome = if n % 2 == 0 {
            client
                .unary(PROTOCOL, "add", int64_params(&[("a", index), ("b", n)]))
                .await
                .map_err(|e| format!("add: {e}"))
                .and_then(|r| {
                    let sum = first_int(&r.batch);
                    (sum == index + n)
                        .then_some(())
                        .ok_or(format!("add answered {sum}"))
                })
        } else {
            client
                .unary(PROTOCOL, "sleep", int64_params(&[("milliseconds", 30)]))
                .await
                .map(|_| ())
                .map_err(|e| format!("sleep: {e}"))
        };
        load.record(outcome);
    }
}

/// A producer stream turned batch by batch; its turns land on whichever
/// replica nginx picks, the restarted ones included.
async fn stream_client(client: Client, load: Arc<Load>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let params = int64_params(&[("n", 1_000_000), ("batch_rows", 1)]);
        let mut stream = match client.producer(PROTOCOL, "count", params).await {
            Ok(stream) => stream,
            Err(error) => {
                load.record(Err(format!("count init: {error}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut expected = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let outcome = match stream.next_batch().await {
                Ok(Some(batch)) if first_int(&batch) == expected => Ok(()),
                Ok(Some(batch)) => Err(format!(
                    "count turn: got {} after {expected}",
                    first_int(&batch)
                )),
                Ok(None) => Err("count ended early".into()),
                Err(error) => Err(format!("count turn {expected}: {error}")),
            };
            let failed = outcome.is_err();
            load.record(outcome);
            if failed {
                break;
            }
            expected += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[test]
fn rolling_restarts_behind_nginx_lose_no_call() {
    let started = Instant::now();
    let ports = [free_port(), free_port()];
    let listen = free_port();
    let mut replicas = ports.map(Replica::start);
    let _nginx = start_nginx(listen, ports);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = Arc::new(Load {
        started,
        operations: AtomicU64::new(0),
        failures: Default::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let client = Client::new(&format!("http://127.0.0.1:{listen}")).unwrap();
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        tasks.push(runtime.spawn(unary_client(
            client.clone(),
            load.clone(),
            stop.clone(),
            index as i64,
        )));
    }
    tasks.push(runtime.spawn(stream_client(client, load.clone(), stop.clone())));
    std::thread::sleep(Duration::from_secs(1));

    let mut drains = Vec::new();
    let mut back = Vec::new();
    for _ in 0..ROUNDS {
        for replica in replicas.iter_mut() {
            assert!(started.elapsed() < DEADLINE, "over {DEADLINE:?}");
            eprintln!(
                "at {:.2?}: SIGTERM to port {}",
                started.elapsed(),
                replica.port
            );
            drains.push(replica.stop());
            let port = replica.port;
            *replica = Replica::start(port);
            let ready = Instant::now();
            while get(replica.address(), "/readyz").map(|(status, _)| status) != Some(200) {
                assert!(
                    ready.elapsed() < Duration::from_secs(10),
                    "the replacement on port {port} was not ready within 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Next replica only once nginx routes to this one again.
            while replica.calls() < 5.0 {
                assert!(
                    ready.elapsed() < Duration::from_secs(30),
                    "nginx sent the replacement on port {port} no traffic within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            back.push(ready.elapsed());
            eprintln!(
                "at {:.2?}: port {} has traffic again",
                started.elapsed(),
                replica.port
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("clients stop within 30 s")
                .unwrap();
        }
    });

    let operations = load.operations.load(Ordering::Relaxed);
    let failures = load.failures.lock().unwrap().clone();
    eprintln!(
        "{ROUNDS} rolling restarts of 2 replicas behind nginx, {CLIENTS} unary clients + 1 stream: \
         {operations} operations, {} failed, in {:?} (drains {drains:?}, traffic back after {back:?})",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {operations} operations failed: {failures:#?}",
        failures.len()
    );
    assert!(operations > 200, "only {operations} operations ran");
}
