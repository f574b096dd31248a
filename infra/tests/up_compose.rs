//! `deploy-kit up/down` on a compose target with the `processes` runtime,
//! against real servers on 127.0.0.1: SeaweedFS (the bucket, lifecycle,
//! CORS), nginx and two kit-service replicas built with `--features s3`.
//! `.ci/test-compose` starts SeaweedFS and exports `KIT_TEST_S3_ENDPOINT`,
//! its credentials and `KIT_TEST_KIT_SERVICE_S3`; without them (or without
//! nginx) these tests fail, they never skip.
#![cfg(feature = "aws")]

#[path = "common/json.rs"]
mod json;

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use kit_service::probe::client::ProbeCaller;

struct Servers {
    s3: String,
    kit_service: PathBuf,
    nginx: PathBuf,
}

fn servers() -> Servers {
    let read = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "`{name}` is not set: these tests need SeaweedFS and an s3-enabled kit-service; run `bash .ci/test-compose`, which provides both"
            )
        })
    };
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        read(name);
    }
    let kit_service = PathBuf::from(read("KIT_TEST_KIT_SERVICE_S3"));
    assert!(
        kit_service.is_file(),
        "`KIT_TEST_KIT_SERVICE_S3` = `{}` does not exist; build it with `cargo build -p kit-service --features s3`",
        kit_service.display()
    );
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: `apt-get install nginx-light` (`.ci/test-compose` does)");
    Servers {
        s3: read("KIT_TEST_S3_ENDPOINT"),
        kit_service,
        nginx,
    }
}

/// A temp directory with the fixture config under a unique name; Drop runs
/// `down --delete-data` and kills anything the state still records, so a
/// failing test leaves no process and no bucket behind.
struct Project {
    dir: PathBuf,
    servers: Servers,
    bucket: String,
    outputs: Vec<String>,
}

impl Project {
    fn new(label: &str) -> Project {
        let servers = servers();
        let unique = format!(
            "{label}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 100_000
        );
        let dir = std::env::temp_dir().join(format!("deploy-kit-compose-{unique}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bucket = format!("kc-{unique}");
        let fixture = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose-processes.yaml"),
        )
        .unwrap();
        let config = fixture
            .replace("http://127.0.0.1:8333", &servers.s3)
            .replace("bucket: kit-compose-data", &format!("bucket: {bucket}"))
            .replace(
                "workspace: ../../..",
                &format!(
                    "workspace: {}",
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").display()
                ),
            );
        std::fs::write(dir.join("deploy-kit.yaml"), config).unwrap();
        Project {
            dir,
            servers,
            bucket,
            outputs: Vec::new(),
        }
    }

    fn output_dir(&self) -> PathBuf {
        self.dir.join(".deploy-kit/ci/stack")
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.output_dir().join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn process(&self, name: &str) -> serde_json::Value {
        self.state()["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "process" && r["name"] == name)
            .unwrap_or_else(|| panic!("no process `{name}` in the state"))
            .clone()
    }

    fn pid(&self, name: &str) -> u32 {
        self.process(name)["outputs"]["pid"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn url(&self, name: &str) -> String {
        self.process(name)["outputs"]["url"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs deploy-kit in the project; keeps every output for the key check.
    fn run(&mut self, args: &[&str]) -> (i32, String, String) {
        let output = Command::cargo_bin("deploy-kit")
            .unwrap()
            .current_dir(&self.dir)
            .args(args)
            .env("DEPLOY_KIT_KIT_SERVICE", &self.servers.kit_service)
            .env("DEPLOY_KIT_NGINX", &self.servers.nginx)
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_REPLICAS")
            .timeout(Duration::from_secs(240))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        self.outputs.push(stdout.clone());
        self.outputs.push(stderr.clone());
        (output.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn up(&mut self) -> (i32, String, String) {
        self.run(&["up", "stack", "--no-wait", "--port", "0"])
    }

    fn doctor_json(&mut self) -> (i32, serde_json::Value) {
        let (code, stdout, stderr) = self.run(&["doctor", "--online", "--format", "json"]);
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {stdout}\n{stderr}"));
        (code, report)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::cargo_bin("deploy-kit").map(|mut command| {
            command
                .current_dir(&self.dir)
                .args(["down", "stack", "--yes", "--delete-data"])
                .timeout(Duration::from_secs(60))
                .output()
        });
        if let Ok(text) = std::fs::read_to_string(self.output_dir().join("state.json"))
            && let Ok(state) = serde_json::from_str::<serde_json::Value>(&text)
        {
            for resource in state["resources"].as_array().into_iter().flatten() {
                if let Some(pid) = resource["outputs"]["pid"].as_str() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

fn wait_dead(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(std::time::Instant::now() < deadline, "pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finding<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {report}"))
}

fn status(report: &serde_json::Value, id: &str) -> String {
    finding(report, id)["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn bucket_exists(endpoint: &str, bucket: &str) -> bool {
    use kit_checks::probe::StorageProbe;
    let clients =
        deploy_kit::engine::aws::clients::AwsClients::new("us-east-1", Some(endpoint)).unwrap();
    deploy_kit::s3_probe::S3StorageProbe::new(clients, bucket)
        .reach()
        .is_ok()
}

#[test]
fn nginx_and_two_replicas_share_streams_then_down_removes_everything() {
    let mut project = Project::new("stack");

    // up: bucket with lifecycle and CORS, key, 2 replicas, nginx, doctor.
    let (code, stdout, stderr) = project.up();
    assert_eq!(code, 0, "up failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("created, lifecycle and CORS verified"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replica-1: started at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("replica-2: started at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nginx: started at http://127.0.0.1:"),
        "{stderr}"
    );
    let nginx_url = project.url("nginx");
    assert!(stdout.contains(&format!("url: {nginx_url}")), "{stdout}");
    let key_file = project.output_dir().join("signing-key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key_hex = key.trim().trim_start_matches("hex:").to_string();
    assert_eq!(key_hex.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is private");
    }
    assert!(bucket_exists(&project.servers.s3, &project.bucket));

    // The online doctor against the recorded replicas: all pass.
    let (code, report) = project.doctor_json();
    for id in [
        "OPS003", "OPS004", "KEY004", "STO001", "STO002", "STO004", "STO005", "STO007",
    ] {
        assert_eq!(
            status(&report, id),
            "pass",
            "{id}: {}",
            finding(&report, id)
        );
    }
    assert_eq!(code, 0, "{report}");

    // A stream started on replica A continues on replica B, and through nginx.
    let (a, b) = (project.url("replica-1"), project.url("replica-2"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let caller = ProbeCaller::new(Duration::from_secs(30), None).unwrap();
    let proof = runtime
        .block_on(caller.stream_across(&a, &b, 4))
        .expect("a stream from replica 1 continues on replica 2");
    assert_eq!(proof.first_server.as_deref(), Some("kit-compose-replica-1"));
    assert!(
        proof
            .continued_by
            .iter()
            .all(|s| s == "kit-compose-replica-2"),
        "{proof:?}"
    );
    let proof = runtime
        .block_on(caller.stream_across(&nginx_url, &b, 3))
        .expect("a stream started through nginx continues on replica 2");
    assert_eq!(proof.ticks, [0, 1, 2]);
    let proof = runtime
        .block_on(caller.stream_across(&nginx_url, &nginx_url, 6))
        .expect("a stream through nginx (round robin) continues");
    assert_eq!(proof.ticks, [0, 1, 2, 3, 4, 5]);
    runtime
        .block_on(caller.external(&nginx_url, 300_000, 7))
        .expect("a result through SeaweedFS, via nginx");

    // A second up changes nothing.
    let pids: Vec<u32> = ["replica-1", "replica-2", "nginx"]
        .iter()
        .map(|name| project.pid(name))
        .collect();
    let (code, stdout, stderr) = project.up();
    assert_eq!(code, 0, "second up failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("unchanged, lifecycle and CORS verified"),
        "{stderr}"
    );
    assert!(stderr.contains("signing key"), "{stderr}");
    for name in ["replica-1", "replica-2", "nginx"] {
        assert!(
            stderr.contains(&format!("  {name}: unchanged")),
            "{name} not unchanged:\n{stderr}"
        );
    }
    let again: Vec<u32> = ["replica-1", "replica-2", "nginx"]
        .iter()
        .map(|name| project.pid(name))
        .collect();
    assert_eq!(pids, again);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);

    // Replica 2 restarted with another key: KEY004 and OPS003 fail, exit 1.
    let other = format!("hex:{}\n", "ab".repeat(32));
    std::fs::remove_file(&key_file).unwrap();
    std::fs::write(&key_file, &other).unwrap();
    let stopped = project.pid("replica-2");
    std::process::Command::new("kill")
        .args(["-TERM", &stopped.to_string()])
        .status()
        .unwrap();
    wait_dead(stopped);
    let (code, stdout, stderr) = project.up();
    assert_eq!(code, 1, "up with mismatched keys:\n{stdout}\n{stderr}");
    assert!(stderr.contains("replica-2: restarted"), "{stderr}");
    assert!(stderr.contains("replica-1: unchanged"), "{stderr}");
    assert_eq!(project.url("replica-2"), b, "the recorded port is kept");
    let (code, report) = project.doctor_json();
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        status(&report, "KEY004"),
        "fail",
        "{}",
        finding(&report, "KEY004")
    );
    assert_eq!(
        status(&report, "OPS003"),
        "fail",
        "{}",
        finding(&report, "OPS003")
    );

    // down stops every process and removes the bucket (it holds objects).
    let state_text = std::fs::read_to_string(project.output_dir().join("state.json")).unwrap();
    let all: Vec<u32> = ["replica-1", "replica-2", "nginx"]
        .iter()
        .map(|name| project.pid(name))
        .collect();
    let (code, stdout, stderr) = project.run(&["down", "stack", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "down failed:\n{stdout}\n{stderr}");
    for pid in all {
        wait_dead(pid);
    }
    assert!(!bucket_exists(&project.servers.s3, &project.bucket));
    assert!(!project.output_dir().join("state.json").exists());
    assert!(!key_file.exists());

    // No key value in any output or in the state.
    let other_hex = "ab".repeat(32);
    for text in project.outputs.iter().chain([&state_text]) {
        assert!(!text.contains(&key_hex), "the key leaked: {text}");
        assert!(!text.contains(&other_hex), "the key leaked: {text}");
    }
}

/// Kills what the states of `dirs` record (a failing environments test).
struct KillOnDrop(Vec<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            for resource in state["resources"].as_array().into_iter().flatten() {
                if let Some(pid) = resource["outputs"]["pid"].as_str() {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", pid])
                        .status();
                }
            }
        }
    }
}

/// Staging and production from one config, side by side: distinct output
/// dirs, states, buckets, keys and processes; `down --env` removes one only.
/// `down --delete-data` empties the bucket the state records under the
/// prefix recorded with it, not the config's (which names another bucket by
/// now): another team's objects in it stay, and so does the bucket.
#[test]
fn down_delete_data_of_a_bucket_the_config_no_longer_names_keeps_other_prefixes() {
    let mut project = Project::new("renamed");
    let old = format!("{}-old", project.bucket);
    let clients =
        deploy_kit::engine::aws::clients::AwsClients::new("us-east-1", Some(&project.servers.s3))
            .unwrap();
    let s3 = &clients.s3;
    clients
        .runtime
        .block_on(s3.create_bucket().bucket(&old).send())
        .unwrap();
    for key in ["svc/ours.bin", "other-team/theirs.bin"] {
        clients
            .runtime
            .block_on(
                s3.put_object()
                    .bucket(&old)
                    .key(key)
                    .body(b"x".to_vec().into())
                    .send(),
            )
            .unwrap();
    }
    std::fs::create_dir_all(project.output_dir()).unwrap();
    std::fs::write(
        project.output_dir().join("state.json"),
        serde_json::json!({
            "schema": "deploy-kit.state/v1",
            "engine": "compose",
            "environment": "ci",
            "target": "stack",
            "id": "0011223344556677",
            "resources": [{
                "kind": "bucket",
                "name": old,
                "settings": {"lifecycle.prefix": "svc/", "endpoint": project.servers.s3},
            }],
        })
        .to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = project.run(&["down", "stack", "--yes", "--delete-data"]);
    let keys: Vec<String> = clients
        .runtime
        .block_on(s3.list_objects_v2().bucket(&old).send())
        .map(|l| {
            l.contents()
                .iter()
                .map(|o| o.key().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    for key in &keys {
        let _ = clients
            .runtime
            .block_on(s3.delete_object().bucket(&old).key(key).send());
    }
    let _ = clients
        .runtime
        .block_on(s3.delete_bucket().bucket(&old).send());
    assert_eq!(
        keys,
        ["other-team/theirs.bin"],
        "exit {code}\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("holds objects outside the service's prefix `svc/`"),
        "{stderr}"
    );
}

#[test]
fn staging_and_production_run_side_by_side() {
    let mut project = Project::new("envs");
    let config = std::fs::read_to_string(project.dir.join("deploy-kit.yaml")).unwrap();
    let staging_bucket = format!("{}-stg", project.bucket);
    std::fs::write(
        project.dir.join("deploy-kit.yaml"),
        config.replace("waivers: []", "")
            + &format!(
                "environments:\n  production: {{}}\n  staging:\n    storage: {{bucket: {staging_bucket}}}\n    signing_key: {{secret: compose:kit-compose-signing-key-staging}}\n"
            ),
    )
    .unwrap();
    let root = project.dir.clone();
    let dir_of = |env: &str| root.join(format!(".deploy-kit/{env}/stack"));
    let _guard = KillOnDrop(vec![dir_of("staging"), dir_of("production")]);
    for env in ["staging", "production"] {
        let (code, stdout, stderr) =
            project.run(&["up", "stack", "--no-wait", "--port", "0", "--env", env]);
        assert_eq!(code, 0, "up --env {env}:\n{stdout}\n{stderr}");
    }
    let state = |env: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir_of(env).join("state.json")).unwrap())
            .unwrap()
    };
    let (staging, production) = (state("staging"), state("production"));
    assert_eq!(staging["environment"], "staging");
    assert_eq!(production["environment"], "production");
    let names = |state: &serde_json::Value, kind: &str| -> Vec<String> {
        state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&staging, "bucket"), vec![staging_bucket.clone()]);
    assert_eq!(names(&production, "bucket"), vec![project.bucket.clone()]);
    assert!(bucket_exists(&project.servers.s3, &staging_bucket));
    assert!(bucket_exists(&project.servers.s3, &project.bucket));
    let pids = |state: &serde_json::Value| -> Vec<u32> {
        state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["outputs"]["pid"].as_str())
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let (staging_pids, production_pids) = (pids(&staging), pids(&production));
    assert_eq!(staging_pids.len(), 3, "2 replicas and nginx");
    assert!(staging_pids.iter().all(|p| !production_pids.contains(p)));
    assert!(
        staging_pids
            .iter()
            .chain(&production_pids)
            .all(|p| alive(*p))
    );
    assert_ne!(
        std::fs::read(dir_of("staging").join("signing-key")).unwrap(),
        std::fs::read(dir_of("production").join("signing-key")).unwrap(),
        "each environment has its own key"
    );

    // Down of staging leaves production running.
    let (code, stdout, stderr) = project.run(&[
        "down",
        "stack",
        "--yes",
        "--delete-data",
        "--env",
        "staging",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for pid in &staging_pids {
        wait_dead(*pid);
    }
    assert!(production_pids.iter().all(|p| alive(*p)));
    assert!(!bucket_exists(&project.servers.s3, &staging_bucket));
    assert!(bucket_exists(&project.servers.s3, &project.bucket));
    let (code, stdout, stderr) = project.run(&[
        "down",
        "stack",
        "--yes",
        "--delete-data",
        "--env",
        "production",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for pid in &production_pids {
        wait_dead(*pid);
    }
}

/// `GET url` over plain HTTP/1.1; the body as JSON.
fn get_json(url: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{url}: {response}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk is enough for /healthz.
        body.split_once("\r\n")
            .unwrap()
            .1
            .rsplit_once("\r\n0")
            .unwrap()
            .0
            .trim_end()
            .to_string()
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Two releases from two builds that differ (the second is the first with
/// bytes appended, so the service behaves alike and reports another
/// `/healthz` `binary.sha256`), then `rollback`: the replicas restart with
/// the retained first binary, which a call through nginx and to every
/// replica shows. Bad input first changes nothing: no release yet, an
/// unknown id, a corrupted state, a state from a newer deploy-kit, and a
/// release whose retained binary was deleted.
#[test]
fn rollback_restarts_the_replicas_with_the_previous_binary() {
    let mut project = Project::new("rb");
    let (code, _, stderr) = project.run(&["rollback", "stack"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("target `stack` has no recorded release"),
        "{stderr}"
    );

    let first = project.servers.kit_service.clone();
    let second = project.dir.join("kit-service-next");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend_from_slice(b"\0deploy-kit rollback test: the next build\0");
    std::fs::write(&second, bytes).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&second, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (first_digest, second_digest) = (sha256_of(&first), sha256_of(&second));
    assert_ne!(first_digest, second_digest);

    let (code, stdout, stderr) = project.up();
    assert_eq!(code, 0, "first up\n{stdout}\n{stderr}");
    assert!(stderr.contains("release 1 is live"), "{stderr}");
    let nginx = project.url("nginx");
    let serving = |project: &Project| -> Vec<String> {
        let mut digests = vec![
            get_json(&format!("{nginx}/healthz"))["binary"]["sha256"]
                .as_str()
                .unwrap()
                .to_string(),
        ];
        for replica in ["replica-1", "replica-2"] {
            let health = get_json(&format!("{}/healthz", project.url(replica)));
            digests.push(health["binary"]["sha256"].as_str().unwrap().to_string());
        }
        digests
    };
    assert_eq!(serving(&project), [first_digest.as_str(); 3]);

    let (code, stdout, stderr) = project.run(&[
        "up",
        "stack",
        "--no-wait",
        "--port",
        "0",
        "--kit-service",
        second.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "second up\n{stdout}\n{stderr}");
    assert!(stderr.contains("release 2 is live"), "{stderr}");
    assert!(stderr.contains("replica-1: restarted"), "{stderr}");
    assert_eq!(project.url("nginx"), nginx, "nginx stays");
    assert_eq!(serving(&project), [second_digest.as_str(); 3]);

    let (code, json, stderr) = project.run(&["releases", "stack", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = json::validated(&json);
    assert_eq!(listed["schema"], "deploy-kit.releases/v1");
    assert_eq!(listed["live"], 2);
    let releases = listed["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["artifact"]["digest"], first_digest.as_str());
    assert_eq!(releases[1]["artifact"]["digest"], second_digest.as_str());
    assert_eq!(releases[1]["live"], true);
    assert!(releases[0]["who"].as_str().unwrap().contains('@'));
    assert_eq!(releases[0]["config_hash"].as_str().unwrap().len(), 64);
    assert_eq!(
        releases[0]["settings"]["KIT_STORAGE_BUCKET"],
        project.bucket.as_str(),
        "{json}"
    );
    let retained = PathBuf::from(releases[0]["restore"]["binary"].as_str().unwrap());
    assert!(retained.starts_with(project.output_dir().join("releases")));
    assert_eq!(sha256_of(&retained), first_digest);
    let (code, table, _) = project.run(&["releases", "stack"]);
    assert_eq!(code, 0);
    let live_row = table.lines().nth(1).unwrap();
    assert!(live_row.starts_with("* 2 "), "{table}");
    assert!(live_row.contains(&second_digest[..19]), "{table}");

    // Refused before anything changes.
    let pids = (project.pid("replica-1"), project.pid("replica-2"));
    let state_before = std::fs::read(project.output_dir().join("state.json")).unwrap();
    let (code, _, stderr) = project.run(&["rollback", "stack", "9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("target `stack` has no release `9`; it has 1, 2 (live: 2)"),
        "{stderr}"
    );
    let state_path = project.output_dir().join("state.json");
    for (label, broken, says) in [
        (
            "corrupt",
            b"{ \"schema\": ".to_vec(),
            "is not a deploy-kit state file",
        ),
        (
            "newer",
            String::from_utf8(state_before.clone())
                .unwrap()
                .replace("deploy-kit.state/v1", "deploy-kit.state/v2")
                .into_bytes(),
            "was written by a newer deploy-kit",
        ),
    ] {
        std::fs::write(&state_path, &broken).unwrap();
        for command in [&["rollback", "stack"][..], &["releases", "stack"][..]] {
            let (code, _, stderr) = project.run(command);
            assert_eq!(code, 1, "{label} {command:?}: {stderr}");
            assert!(stderr.contains(says), "{label}: {stderr}");
            assert!(
                stderr.contains("deploy-kit state pull"),
                "{label}: {stderr}"
            );
            assert_eq!(std::fs::read(&state_path).unwrap(), broken, "{label}: kept");
        }
    }
    std::fs::write(&state_path, &state_before).unwrap();
    assert_eq!((project.pid("replica-1"), project.pid("replica-2")), pids);
    assert_eq!(serving(&project), [second_digest.as_str(); 3]);

    // The rollback (default: the release before the live one).
    let (code, stdout, stderr) = project.run(&["rollback", "stack"]);
    assert_eq!(code, 0, "rollback\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("rollback: target `stack` to release 1"),
        "{stderr}"
    );
    assert!(
        stdout.contains("pass    OPS003"),
        "the post-up check ran:\n{stdout}"
    );
    assert_ne!(project.pid("replica-1"), pids.0, "restarted");
    assert_eq!(project.url("nginx"), nginx);
    assert_eq!(
        serving(&project),
        [first_digest.as_str(); 3],
        "the first binary answers"
    );
    let (_, json, _) = project.run(&["releases", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["live"], 3);
    let third = &listed["releases"][2];
    assert_eq!(third["command"], "rollback");
    assert_eq!(third["returns_to"], 1);
    assert_eq!(third["artifact"]["digest"], first_digest.as_str());

    // Release 2's retained binary deleted: refused, the first still serves.
    let retained_second =
        PathBuf::from(listed["releases"][1]["restore"]["binary"].as_str().unwrap());
    std::fs::remove_file(&retained_second).unwrap();
    let pids = (project.pid("replica-1"), project.pid("replica-2"));
    let state_before = std::fs::read(&state_path).unwrap();
    let (code, _, stderr) = project.run(&["rollback", "stack", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the artifact of release 2 of target `stack` is gone"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(std::fs::read(&state_path).unwrap(), state_before);
    assert_eq!((project.pid("replica-1"), project.pid("replica-2")), pids);
    assert_eq!(serving(&project), [first_digest.as_str(); 3]);
}
