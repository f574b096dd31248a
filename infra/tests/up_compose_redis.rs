//! `rate_limit.store: redis` on a compose target with the `processes`
//! runtime: `up` provisions a `redis-server` on 127.0.0.1, both replicas
//! count in it (one limit through nginx, not one per replica), a second `up`
//! leaves it alone and `down` stops it. Real binaries only: `kit-service`
//! (built beside `deploy-kit`), nginx and Debian's `redis-server`
//! (`.ci/test` installs both); without them this test fails, it never skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;

const LIMIT: usize = 1000;

#[path = "common/service.rs"]
mod kit;
use kit::kit_service;

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: `apt-get install nginx-light` (`.ci/test` does)")
}

fn config(workspace: &Path) -> String {
    format!(
        "version: 1
service:
  name: kit-redis
  environment: ci
  package: kit-service
  workspace: {workspace}
default_target: stack
targets:
  stack:
    platform: compose
    instances: 2
    bind: 127.0.0.1:8080
limits:
  shutdown_grace_seconds: 8
rate_limit:
  limit: {LIMIT}/3600
  store: redis
  on_store_failure: closed
signing_key:
  source: secret
  secret: compose:kit-redis-signing-key
",
        workspace = workspace.display()
    )
}

/// A temp project; Drop runs `down` and kills whatever the state records.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new() -> Project {
        let dir = std::env::temp_dir().join(format!(
            "deploy-kit-compose-redis-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::write(dir.join("deploy-kit.yaml"), config(&workspace)).unwrap();
        Project { dir }
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let output = Command::cargo_bin("deploy-kit")
            .unwrap()
            .current_dir(&self.dir)
            .args(args)
            .env("DEPLOY_KIT_KIT_SERVICE", kit_service())
            .env("DEPLOY_KIT_NGINX", nginx())
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_REPLICAS")
            .timeout(Duration::from_secs(240))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    fn process(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.dir.join(".deploy-kit/ci/stack/state.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "process" && r["name"] == name)
            .unwrap_or_else(|| panic!("no process `{name}` in the state: {state}"))
            .clone()
    }

    fn output(&self, name: &str, key: &str) -> String {
        self.process(name)["outputs"][key]
            .as_str()
            .unwrap_or_else(|| panic!("process `{name}` records no `{key}`"))
            .to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down", "stack", "--yes"]);
        if let Ok(text) = std::fs::read_to_string(self.dir.join(".deploy-kit/ci/stack/state.json"))
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

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

#[test]
fn compose_processes_share_one_rate_limit_through_a_provisioned_redis() {
    let project = Project::new();
    let (code, text) = project.run(&["up", "stack", "--no-wait", "--port", "0"]);
    assert!(text.contains("redis"), "{text}");
    assert_eq!(code, 0, "{text}");
    let redis_pid = project.output("redis", "pid");
    assert!(alive(&redis_pid));
    let nginx = project.output("nginx", "url");

    // Any non-exempt request counts (the doctor's probe calls during `up`
    // did too): a GET on an RPC route is a 405 naming the replica that
    // answered, with `X-RateLimit-Remaining`. nginx spreads the calls over
    // both replicas, and one shared count goes down by one per call; two
    // in-process limiters would each count their own half.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut remaining = Vec::new();
    let mut servers = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let mut response = agent
            .get(format!("{nginx}/kit.Demo.v1/add"))
            .call()
            .expect("nginx answers");
        assert_eq!(response.status().as_u16(), 405);
        remaining.push(
            response.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
        let body = response.body_mut().read_to_vec().unwrap();
        let streams =
            kit_service::wire::ipc::read_streams(&body.into()).expect("an Arrow error stream");
        servers.insert(
            streams[0].batches[0]
                .get(kit_service::wire::SERVER_ID_KEY)
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(servers.len(), 2, "both replicas answered: {servers:?}");
    assert!(
        remaining.windows(2).all(|pair| pair[1] + 1 == pair[0]),
        "one count across both replicas: {remaining:?}"
    );
    assert!(remaining[0] < LIMIT, "{remaining:?}");

    let (code, text) = project.run(&["up", "stack", "--no-wait", "--port", "0"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        project.output("redis", "pid"),
        redis_pid,
        "a second `up` leaves a live redis alone: {text}"
    );

    let (code, text) = project.run(&["down", "stack", "--yes"]);
    assert_eq!(code, 0, "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive(&redis_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "redis still runs after `down`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
