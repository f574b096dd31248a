//! Secret Manager, Cloud Run, IAM (service accounts and resource policies)
//! and the OAuth token exchange against a fake on 127.0.0.1 (feature
//! `gcp`). Google offers no emulator for these APIs, so these tests check
//! the requests deploy-kit sends (method, path, body fields) and how it
//! reads the answers; they do not prove Google accepts them. The fake
//! answers like the v1/v2 REST references describe, and refuses a
//! `setIamPolicy` whose `etag` is not the one it last served (HTTP 409, as
//! IAM does), so a write that skipped the read fails.
//!
//! The test with a bucket runs Cloud Storage on the real
//! gcp-storage-emulator (`KIT_TEST_GCS_ENDPOINT`, started by
//! `.ci/test-gcp`), through the fake as a recording proxy, so the bucket
//! IAM policy is written to and read back from the emulator.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use deploy_kit::config::DeployConfig;
use deploy_kit::engine::Progress;
use deploy_kit::engine::gcp::apply::{down_with, up_with};
use serde_json::{Value, json};

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: String,
}

type Handler = dyn Fn(&Seen, &mut Fake) -> (u16, Value) + Send;

/// Fake Google state: secrets with their versions' payloads, services, policies.
#[derive(Default)]
struct Fake {
    secrets: HashMap<String, Vec<String>>,
    /// The labels of each secret, as created or patched.
    secret_labels: HashMap<String, Value>,
    services: HashMap<String, Value>,
    policies: HashMap<String, Value>,
    /// Service accounts by e-mail.
    accounts: HashMap<String, Value>,
    /// Policy writes so far (the next etag).
    policy_writes: u32,
    /// A resource whose next `setIamPolicy` loses a race: another admin's
    /// binding lands first (new etag) and the write gets 409.
    race: Option<String>,
    /// Cloud Storage objects by name (JSON bodies only: state and locks).
    objects: HashMap<String, Value>,
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn serve(handler: Box<Handler>) -> Server {
    serve_with(handler, None, Fake::default())
}

/// Cloud Storage paths go to `storage` (the emulator) unchanged, bytes and
/// content type included; everything else to `handler`.
fn serve_with(handler: Box<Handler>, storage: Option<String>, fake: Fake) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut fake = fake;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut length = 0;
            let mut content_type = String::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    } else if name.eq_ignore_ascii_case("content-type") {
                        content_type = value.trim().to_string();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request = Seen {
                method,
                target,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            log.lock().unwrap().push(request.clone());
            if let Some(storage) = &storage
                && ["/storage/", "/upload/", "/download/"]
                    .iter()
                    .any(|p| request.target.starts_with(p))
            {
                let (status, kind, answer) = forward(storage, &request, &content_type, body);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(&answer);
                continue;
            }
            let (status, answer) = handler(&request, &mut fake);
            let answer = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Server { url, seen }
}

/// One request passed to the storage emulator as it came; a 204 becomes
/// a 200 with an empty body (the fake's writer always sends a body).
fn forward(
    base: &str,
    request: &Seen,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut builder = ureq::http::Request::builder()
        .method(request.method.as_str())
        .uri(format!("{base}{}", request.target));
    if !content_type.is_empty() {
        builder = builder.header("content-type", content_type);
    }
    let mut response = agent.run(builder.body(body).unwrap()).unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let bytes = response.body_mut().read_to_vec().unwrap_or_default();
    (if status == 204 { 200 } else { status }, kind, bytes)
}

/// `GET|POST X:getIamPolicy` and `POST X:setIamPolicy` for any resource:
/// a policy with an etag that every write must quote and that changes on
/// every write.
fn iam_policy(request: &Seen, fake: &mut Fake, path: &str) -> Option<(u16, Value)> {
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    if let Some(resource) = path.strip_suffix(":getIamPolicy") {
        let policy = fake
            .policies
            .get(resource)
            .cloned()
            .unwrap_or(json!({"version": 1, "etag": "BwE="}));
        return Some((200, policy));
    }
    let resource = path.strip_suffix(":setIamPolicy")?;
    assert_eq!(request.method, "POST", "{}", request.target);
    if fake.race.as_deref() == Some(resource) {
        fake.race = None;
        fake.policy_writes += 1;
        let mut policy = fake
            .policies
            .get(resource)
            .cloned()
            .unwrap_or(json!({"version": 1}));
        policy["etag"] = json!(format!("etag-{}", fake.policy_writes));
        policy["bindings"] = json!([{"role": "roles/secretmanager.secretAccessor", "members": ["group:ops@example.com"]}]);
        fake.policies.insert(resource.to_string(), policy);
    }
    let current = fake
        .policies
        .get(resource)
        .and_then(|p| p["etag"].as_str().map(str::to_string))
        .unwrap_or("BwE=".into());
    if body["policy"]["etag"] != current.as_str() {
        return Some((
            409,
            json!({"error": {"code": 409, "status": "ABORTED", "message": "There were concurrent policy changes."}}),
        ));
    }
    fake.policy_writes += 1;
    let mut policy = body["policy"].clone();
    policy["etag"] = json!(format!("etag-{}", fake.policy_writes));
    fake.policies.insert(resource.to_string(), policy.clone());
    Some((200, policy))
}

/// IAM v1 service accounts, as far as deploy-kit uses them.
fn service_accounts(request: &Seen, fake: &mut Fake, path: &str) -> Option<(u16, Value)> {
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let not_found = (404, json!({"error": {"code": 404, "message": "not found"}}));
    if request.method == "POST" && path == "v1/projects/p/serviceAccounts" {
        let id = body["accountId"].as_str().unwrap().to_string();
        assert!((6..=30).contains(&id.len()), "{id}");
        let email = format!("{id}@p.iam.gserviceaccount.com");
        let mut account = body["serviceAccount"].clone();
        account["email"] = json!(email);
        account["name"] = json!(format!("projects/p/serviceAccounts/{email}"));
        fake.accounts.insert(email, account.clone());
        return Some((200, account));
    }
    let email = percent_decode(path.strip_prefix("v1/projects/p/serviceAccounts/")?);
    match request.method.as_str() {
        "GET" => Some(match fake.accounts.get(&email) {
            Some(account) => (200, account.clone()),
            None => not_found,
        }),
        "DELETE" => Some(match fake.accounts.remove(&email) {
            Some(_) => (200, json!({})),
            None => not_found,
        }),
        _ => None,
    }
}

/// Secret Manager v1, IAM v1 and Cloud Run v2, as far as deploy-kit uses them.
fn google(request: &Seen, fake: &mut Fake) -> (u16, Value) {
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let path = path.trim_start_matches('/');
    let not_found = (404, json!({"error": {"code": 404, "message": "not found"}}));
    let decoded = percent_decode(path);
    if let Some(answer) = iam_policy(request, fake, &decoded) {
        return answer;
    }
    if let Some(answer) = service_accounts(request, fake, path) {
        return answer;
    }
    match (request.method.as_str(), path) {
        ("POST", "v1/projects/p/secrets") => {
            assert_eq!(body["replication"], json!({"automatic": {}}), "{body}");
            let id = query.strip_prefix("secretId=").unwrap();
            fake.secrets.insert(id.to_string(), Vec::new());
            fake.secret_labels
                .insert(id.to_string(), body["labels"].clone());
            (200, json!({"name": format!("projects/p/secrets/{id}")}))
        }
        ("GET", secret) if secret.starts_with("v1/projects/p/secrets/") => {
            let rest = secret.trim_start_matches("v1/projects/p/secrets/");
            if let Some(id) = rest.strip_suffix("/versions") {
                assert_eq!(query, "filter=state%3AENABLED");
                let versions: Vec<Value> = fake.secrets[id]
                    .iter()
                    .enumerate()
                    .map(|(i, _)| json!({"name": format!("projects/p/secrets/{id}/versions/{}", i + 1), "state": "ENABLED"}))
                    .collect();
                return (200, json!({"versions": versions}));
            }
            match fake.secrets.get(rest) {
                Some(_) => (
                    200,
                    json!({"name": format!("projects/p/secrets/{rest}"), "labels": fake.secret_labels.get(rest)}),
                ),
                None => not_found,
            }
        }
        ("PATCH", secret) if secret.starts_with("v1/projects/p/secrets/") => {
            assert_eq!(query, "updateMask=labels");
            let id = secret.trim_start_matches("v1/projects/p/secrets/");
            fake.secret_labels
                .insert(id.to_string(), body["labels"].clone());
            (
                200,
                json!({"name": format!("projects/p/secrets/{id}"), "labels": body["labels"]}),
            )
        }
        ("POST", add) if add.ends_with(":addVersion") => {
            let id = add
                .trim_start_matches("v1/projects/p/secrets/")
                .trim_end_matches(":addVersion");
            let data = base64::engine::general_purpose::STANDARD
                .decode(body["payload"]["data"].as_str().unwrap())
                .unwrap();
            let value = String::from_utf8(data).unwrap();
            let versions = fake.secrets.get_mut(id).unwrap();
            versions.push(value);
            (
                200,
                json!({"name": format!("projects/p/secrets/{id}/versions/{}", versions.len()), "state": "ENABLED"}),
            )
        }
        ("DELETE", secret) if secret.starts_with("v1/projects/p/secrets/") => {
            let id = secret.trim_start_matches("v1/projects/p/secrets/");
            match fake.secrets.remove(id) {
                Some(_) => (200, json!({})),
                None => not_found,
            }
        }
        ("POST", "v2/projects/p/locations/us-central1/services") => {
            let id = query.strip_prefix("serviceId=").unwrap();
            let mut service = body.clone();
            service["uri"] = json!(format!("https://{id}-abc.a.run.app"));
            service["generation"] = json!("1");
            fake.services.insert(id.to_string(), service);
            // Not done yet: deploy-kit must poll the operation.
            (
                200,
                json!({"name": format!("projects/p/locations/us-central1/operations/create-{id}"), "done": false}),
            )
        }
        ("GET", operation)
            if operation.starts_with("v2/projects/p/locations/us-central1/operations/create-") =>
        {
            let id = operation
                .trim_start_matches("v2/projects/p/locations/us-central1/operations/create-");
            (
                200,
                json!({"name": operation, "done": true, "response": fake.services[id]}),
            )
        }
        ("GET", service)
            if service.starts_with("v2/projects/p/locations/us-central1/services/") =>
        {
            let id = service.trim_start_matches("v2/projects/p/locations/us-central1/services/");
            match fake.services.get(id) {
                Some(service) => (200, service.clone()),
                None => not_found,
            }
        }
        ("PATCH", service)
            if service.starts_with("v2/projects/p/locations/us-central1/services/") =>
        {
            let id = service.trim_start_matches("v2/projects/p/locations/us-central1/services/");
            let mut updated = body.clone();
            updated["uri"] = fake.services[id]["uri"].clone();
            fake.services.insert(id.to_string(), updated.clone());
            (
                200,
                json!({"name": "op-patch", "done": true, "response": updated}),
            )
        }
        ("DELETE", service)
            if service.starts_with("v2/projects/p/locations/us-central1/services/") =>
        {
            let id = service.trim_start_matches("v2/projects/p/locations/us-central1/services/");
            match fake.services.remove(id) {
                Some(_) => (200, json!({"name": "op-delete", "done": true})),
                None => not_found,
            }
        }
        _ => (
            400,
            json!({"error": {"message": format!("fake: unexpected {} {}", request.method, request.target)}}),
        ),
    }
}

struct Workspace {
    dir: std::path::PathBuf,
}

impl Workspace {
    fn new(name: &str) -> Workspace {
        let dir = std::env::temp_dir().join(format!(
            "deploy-kit-gcp-fake-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Workspace { dir }
    }

    fn config(&self, image: &str) -> DeployConfig {
        // ART001 checks this repository's kit-service.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .display()
            .to_string();
        let yaml = format!(
            r#"version: 1
service:
  name: svc
  image: {image}
  package: kit-service
  workspace: "{root}"
targets:
  run:
    platform: cloud-run
    project: p
    region: us-central1
    instances: 3
    public: true
signing_key:
  source: secret
  secret: gcp:projects/p/secrets/svc-key
"#
        );
        let path = self.dir.join("deploy-kit.yaml");
        std::fs::write(&path, &yaml).unwrap();
        DeployConfig::parse(&yaml, &path).unwrap()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Requests other than reads, as `METHOD path`.
fn writes(server: &Server, from: usize) -> Vec<String> {
    server.seen.lock().unwrap()[from..]
        .iter()
        .filter(|s| s.method != "GET" && !s.target.contains(":getIamPolicy"))
        .map(|s| format!("{} {}", s.method, s.target.split('?').next().unwrap()))
        .collect()
}

#[test]
fn cloud_run_target_gets_a_key_secret_once_and_a_public_service() {
    let server = serve(Box::new(google));
    let workspace = Workspace::new("run");
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT"
        | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT"
        | "DEPLOY_KIT_IAM_ENDPOINT" => Some(server.url.clone()),
        _ => None,
    };
    let path = workspace.dir.join("deploy-kit.yaml");
    let lines = Lines::default();
    let mut progress = Progress::to(Box::new(lines.clone()));

    let config = workspace.config("ghcr.io/acme/svc:1");
    up_with(&config, &path, "run", &env, &mut progress)
        .unwrap_or_else(|e| panic!("{} / {}", e.message, e.hint));
    assert_eq!(
        writes(&server, 0),
        [
            "POST /v1/projects/p/secrets",
            "POST /v1/projects/p/secrets/svc-key:addVersion",
            "POST /v1/projects/p/serviceAccounts",
            "POST /v1/projects/p/secrets/svc-key:setIamPolicy",
            "POST /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com:setIamPolicy",
            "POST /v2/projects/p/locations/us-central1/services",
            "POST /v2/projects/p/locations/us-central1/services/svc-dev:setIamPolicy",
        ]
    );
    let seen = server.seen.lock().unwrap().clone();
    let added = seen
        .iter()
        .find(|s| s.target.ends_with(":addVersion"))
        .unwrap();
    let payload: Value = serde_json::from_str(&added.body).unwrap();
    let key = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(payload["payload"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        key.starts_with("hex:") && key.len() == 68,
        "a 32-byte hex key"
    );
    let created = seen
        .iter()
        .find(|s| s.method == "POST" && s.target.contains("services?serviceId=svc-dev"))
        .unwrap();
    let service: Value = serde_json::from_str(&created.body).unwrap();
    // The secret and the service carry the state's id (docs/ownership.md).
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace.dir.join(".deploy-kit/dev/run/state.json")).unwrap(),
    )
    .unwrap();
    let id = state["id"].as_str().unwrap();
    let labels = json!({"managed-by": "deploy-kit", "deploy-kit-id": id});
    assert_eq!(service["labels"], labels);
    let secret = seen
        .iter()
        .find(|s| s.method == "POST" && s.target.contains("secrets?secretId=svc-key"))
        .unwrap();
    let secret: Value = serde_json::from_str(&secret.body).unwrap();
    assert_eq!(secret["labels"], labels);
    let container = &service["template"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/acme/svc:1");
    assert_eq!(service["template"]["scaling"]["maxInstanceCount"], 3);
    assert_eq!(service["template"]["timeout"], "300s");
    let key_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "VGI_SIGNING_KEY")
        .unwrap();
    assert_eq!(
        key_env["valueSource"]["secretKeyRef"],
        json!({"secret": "projects/p/secrets/svc-key", "version": "latest"})
    );
    let policy = seen
        .iter()
        .find(|s| s.target.ends_with("services/svc-dev:setIamPolicy"))
        .unwrap();
    let policy: Value = serde_json::from_str(&policy.body).unwrap();
    assert_eq!(
        policy["policy"]["bindings"],
        json!([{"role": "roles/run.invoker", "members": ["allUsers"]}])
    );

    // The key is in no request but the one that stores it, nor in the state or progress.
    let state =
        std::fs::read_to_string(workspace.dir.join(".deploy-kit/dev/run/state.json")).unwrap();
    assert!(!state.contains(&key[4..]), "{state}");
    assert!(state.contains("https://svc-dev-abc.a.run.app"), "{state}");
    let output = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(!output.contains(&key[4..]), "{output}");

    // Second run: reads only.
    let count = server.seen.lock().unwrap().len();
    up_with(&config, &path, "run", &env, &mut progress).unwrap();
    assert_eq!(writes(&server, count), Vec::<String>::new());

    // A new image is one PATCH, and the key stays.
    let count = server.seen.lock().unwrap().len();
    let config = workspace.config("ghcr.io/acme/svc:2");
    up_with(&config, &path, "run", &env, &mut progress).unwrap();
    assert_eq!(
        writes(&server, count),
        ["PATCH /v2/projects/p/locations/us-central1/services/svc-dev"]
    );

    // Down: newest first.
    let count = server.seen.lock().unwrap().len();
    down_with(&config, &path, "run", false, &env, &mut progress).unwrap();
    assert_eq!(
        writes(&server, count),
        [
            "DELETE /v2/projects/p/locations/us-central1/services/svc-dev",
            "POST /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com:setIamPolicy",
            "POST /v1/projects/p/secrets/svc-key:setIamPolicy",
            "DELETE /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com",
            "DELETE /v1/projects/p/secrets/svc-key",
        ]
    );
    assert!(
        !workspace
            .dir
            .join(".deploy-kit/dev/run/state.json")
            .exists()
    );
}

fn emulator() -> String {
    std::env::var("KIT_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!("`KIT_TEST_GCS_ENDPOINT` is not set: run `bash .ci/test-gcp`, which starts gcp-storage-emulator")
    })
}

/// The bindings of `role` in a policy, as sorted member lists.
fn members(policy: &Value, role: &str) -> Vec<String> {
    let mut members: Vec<String> = policy["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["role"] == role)
        .flat_map(|b| b["members"].as_array().cloned().unwrap_or_default())
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    members.sort();
    members
}

/// The runtime identity: a service account of its own, set on the
/// revision, with exactly three grants (the key secret, the bucket, itself)
/// written by read-modify-write and never again on an unchanged `up`; and
/// the Cloud Run sizing from `cloud_run:`.
#[test]
fn cloud_run_runs_as_its_own_account_with_grants_on_its_resources_only() {
    let storage = emulator();
    let server = serve_with(Box::new(google), Some(storage.clone()), Fake::default());
    let workspace = Workspace::new("run-iam");
    let bucket = format!(
        "svc-iam-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT"
        | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT"
        | "DEPLOY_KIT_IAM_ENDPOINT"
        | "STORAGE_EMULATOR_HOST" => Some(server.url.clone()),
        _ => None,
    };
    let path = workspace.dir.join("deploy-kit.yaml");
    let yaml = format!(
        r#"version: 1
service:
  name: svc
  image: ghcr.io/acme/svc:1
targets:
  run:
    platform: cloud-run
    project: p
    region: us-central1
    instances: 3
    cloud_run: {{cpu: '2', memory: 1Gi, concurrency: 20, min_instances: 1}}
limits:
  request_timeout_seconds: 120
signing_key:
  source: secret
  secret: gcp:projects/p/secrets/svc-key
storage:
  provider: gcs
  bucket: {bucket}
  prefix: vgi-rpc/
  expiry_days: 1
  credential: service-account
"#
    );
    std::fs::write(&path, &yaml).unwrap();
    let config = DeployConfig::parse(&yaml, &path).unwrap();
    let mut progress = Progress::to(Box::new(Lines::default()));
    up_with(&config, &path, "run", &env, &mut progress)
        .unwrap_or_else(|e| panic!("{} / {}", e.message, e.hint));

    let email = "svc-dev@p.iam.gserviceaccount.com";
    let member = format!("serviceAccount:{email}");
    let seen = server.seen.lock().unwrap().clone();
    let position = |what: &str| {
        seen.iter()
            .position(|s| format!("{} {}", s.method, s.target).starts_with(what))
            .unwrap_or_else(|| panic!("no `{what}` in {:#?}", writes(&server, 0)))
    };

    // The account, before any grant; the grants before the service.
    let created = &seen[position("POST /v1/projects/p/serviceAccounts")];
    let body: Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(body["accountId"], "svc-dev");
    assert!(
        body["serviceAccount"]["description"]
            .as_str()
            .unwrap()
            .starts_with("managed-by: deploy-kit"),
        "{body}"
    );
    let account_at = position("POST /v1/projects/p/serviceAccounts");
    let service_at =
        position("POST /v2/projects/p/locations/us-central1/services?serviceId=svc-dev");

    // Exactly three policy writes, each on one resource, none on the project.
    let policy_writes: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target.contains(":setIamPolicy") || s.target.contains("/iam"))
        .filter(|s| s.method != "GET")
        .collect();
    let targets: Vec<String> = policy_writes
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert_eq!(
        targets,
        [
            "POST /v1/projects/p/secrets/svc-key:setIamPolicy".to_string(),
            format!("PUT /storage/v1/b/{bucket}/iam"),
            "POST /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com:setIamPolicy"
                .to_string(),
        ]
    );
    for write in &policy_writes {
        let at = seen.iter().position(|s| std::ptr::eq(s, *write)).unwrap();
        assert!(account_at < at && at < service_at, "order: {targets:?}");
    }
    let sent = |i: usize| -> Value {
        let body: Value = serde_json::from_str(&policy_writes[i].body).unwrap();
        body.get("policy").cloned().unwrap_or(body)
    };
    // Read-modify-write: the etag of the read goes back with the write.
    assert_eq!(sent(0)["etag"], "BwE=");
    assert_eq!(
        sent(0)["bindings"],
        json!([{"role": "roles/secretmanager.secretAccessor", "members": [member]}])
    );
    assert_eq!(
        sent(2)["bindings"],
        json!([{"role": "roles/iam.serviceAccountTokenCreator", "members": [member]}])
    );
    // The bucket keeps the emulator's default bindings and gains ours,
    // read back from the emulator itself.
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let stored: Value = serde_json::from_slice(
        &agent
            .get(format!("{storage}/storage/v1/b/{bucket}/iam"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        members(&stored, "roles/storage.objectAdmin"),
        std::slice::from_ref(&member)
    );
    let before: usize = sent(1)["bindings"].as_array().unwrap().len();
    assert_eq!(stored["bindings"].as_array().unwrap().len(), before);
    assert!(before >= 1);

    // The revision runs as the account, sized as configured.
    let service: Value = serde_json::from_str(&seen[service_at].body).unwrap();
    let template = &service["template"];
    assert_eq!(template["serviceAccount"], email);
    assert_eq!(
        template["scaling"],
        json!({"minInstanceCount": 1, "maxInstanceCount": 3})
    );
    assert_eq!(template["maxInstanceRequestConcurrency"], 20);
    assert_eq!(template["timeout"], "120s");
    assert_eq!(
        template["containers"][0]["resources"]["limits"],
        json!({"cpu": "2", "memory": "1Gi"})
    );

    // Second run: no account, no policy, no service write.
    let count = server.seen.lock().unwrap().len();
    up_with(&config, &path, "run", &env, &mut progress).unwrap();
    let again: Vec<String> = writes(&server, count)
        .into_iter()
        .filter(|w| !w.contains("/o"))
        .collect();
    assert_eq!(again, Vec::<String>::new(), "doctor's object probes aside");

    // Down revokes each grant and deletes what deploy-kit made.
    let count = server.seen.lock().unwrap().len();
    down_with(&config, &path, "run", true, &env, &mut progress).unwrap();
    let removed = writes(&server, count);
    for expected in [
        "DELETE /v2/projects/p/locations/us-central1/services/svc-dev".to_string(),
        "POST /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com:setIamPolicy"
            .to_string(),
        format!("PUT /storage/v1/b/{bucket}/iam"),
        "POST /v1/projects/p/secrets/svc-key:setIamPolicy".to_string(),
        "DELETE /v1/projects/p/serviceAccounts/svc-dev%40p.iam.gserviceaccount.com".to_string(),
        "DELETE /v1/projects/p/secrets/svc-key".to_string(),
        format!("DELETE /storage/v1/b/{bucket}"),
    ] {
        assert!(removed.contains(&expected), "{expected} in {removed:#?}");
    }
}

/// Another admin changes the secret's policy between deploy-kit's read and
/// write: the write quoting the old etag is refused (409), deploy-kit reads
/// again, and both bindings end up in the policy.
#[test]
fn a_raced_policy_write_is_read_again_and_keeps_the_other_binding() {
    let fake = Fake {
        race: Some("v1/projects/p/secrets/svc-key".into()),
        ..Fake::default()
    };
    let server = serve_with(Box::new(google), None, fake);
    let workspace = Workspace::new("run-race");
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT"
        | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT"
        | "DEPLOY_KIT_IAM_ENDPOINT" => Some(server.url.clone()),
        _ => None,
    };
    let config = workspace.config("ghcr.io/acme/svc:1");
    let target = config.targets["run"].clone();
    let settings = deploy_kit::engine::gcp::GcpSettings::resolve(&config, "run", &target).unwrap();
    let mut engine = deploy_kit::engine::gcp::apply::GcpEngine::new(settings, &env).unwrap();
    engine.set_poll_interval(std::time::Duration::from_millis(10));
    use deploy_kit::engine::Engine as _;
    let desired = engine.desired().unwrap();
    let mut progress = Progress::to(Box::new(Lines::default()));
    engine
        .apply(&desired, &mut progress, &mut |_| Ok(()))
        .unwrap_or_else(|e| panic!("{} / {}", e.message, e.hint));
    let seen = server.seen.lock().unwrap().clone();
    let secret_writes: Vec<Value> = seen
        .iter()
        .filter(|s| s.target == "/v1/projects/p/secrets/svc-key:setIamPolicy")
        .map(|s| serde_json::from_str::<Value>(&s.body).unwrap()["policy"].clone())
        .collect();
    assert_eq!(secret_writes.len(), 2, "refused once, then written");
    assert_eq!(secret_writes[0]["etag"], "BwE=");
    assert_ne!(
        secret_writes[1]["etag"], "BwE=",
        "the etag of the second read"
    );
    assert_eq!(
        members(&secret_writes[1], "roles/secretmanager.secretAccessor"),
        [
            "group:ops@example.com".to_string(),
            "serviceAccount:svc-dev@p.iam.gserviceaccount.com".to_string()
        ]
    );
}

/// `auth.required` and `auth.api_keys` reach Cloud Run: the service's
/// variables are the rendered ones key for key (one settings model), and
/// the keys arrive as a Secret Manager reference, never a value.
#[test]
fn cloud_run_gets_the_rendered_settings_and_the_api_keys_by_reference() {
    let server = serve(Box::new(google));
    let workspace = Workspace::new("run-auth");
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT"
        | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT"
        | "DEPLOY_KIT_IAM_ENDPOINT" => Some(server.url.clone()),
        _ => None,
    };
    let path = workspace.dir.join("deploy-kit.yaml");
    let base = std::fs::read_to_string({
        workspace.config("ghcr.io/acme/svc:1");
        &path
    })
    .unwrap();
    let yaml = format!(
        "{base}auth:\n  required: true\n  api_keys: gcp:projects/p/secrets/svc-api-keys\nrate_limit: {{limit: 100/60}}\n"
    );
    std::fs::write(&path, &yaml).unwrap();
    let config = DeployConfig::parse(&yaml, &path).unwrap();
    let mut progress = Progress::to(Box::new(Lines::default()));
    up_with(&config, &path, "run", &env, &mut progress)
        .unwrap_or_else(|e| panic!("{} / {}", e.message, e.hint));
    let seen = server.seen.lock().unwrap().clone();
    let created = seen
        .iter()
        .find(|s| s.method == "POST" && s.target.contains("services?serviceId=svc-dev"))
        .unwrap();
    let service: Value = serde_json::from_str(&created.body).unwrap();
    let env_list = service["template"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let value_of = |name: &str| {
        env_list
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("`{name}` in {env_list:#?}"))
            .clone()
    };
    assert_eq!(value_of("KIT_REQUIRE_AUTH")["value"], "true");
    assert_eq!(value_of("KIT_RATE_LIMIT")["value"], "100/60");
    assert_eq!(
        value_of("KIT_API_KEYS")["valueSource"]["secretKeyRef"],
        json!({"secret": "projects/p/secrets/svc-api-keys", "version": "latest"})
    );
    let (rendered, _) = deploy_kit::render::service_environment(&config, "run").unwrap();
    for var in rendered {
        assert_eq!(value_of(&var.name)["value"], var.value, "`{}`", var.name);
    }
}

#[test]
fn service_account_keys_are_exchanged_with_a_signed_jwt_once() {
    let server = serve(Box::new(|request: &Seen, _: &mut Fake| {
        assert_eq!(request.method, "POST");
        (
            200,
            json!({"access_token": format!("token-for-{}", request.body.len()), "expires_in": 3600}),
        )
    }));
    let mut key: Value =
        serde_json::from_str(include_str!("fixtures/gcp_service_account.json")).unwrap();
    key["token_uri"] = json!(format!("{}/token", server.url));
    let credentials =
        deploy_kit::gcp::Credentials::from_json(key.to_string().as_bytes(), "key.json").unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let first = credentials.access_token(&agent).unwrap();
    let second = credentials.access_token(&agent).unwrap();
    assert_eq!(first, second, "cached");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/token");
    let form: HashMap<String, String> = seen[0]
        .body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        form["grant_type"],
        "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    );
    assert_eq!(form["assertion"].split('.').count(), 3);

    let refused = serve(Box::new(|_: &Seen, _: &mut Fake| {
        (
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        )
    }));
    key["token_uri"] = json!(format!("{}/token", refused.url));
    let credentials =
        deploy_kit::gcp::Credentials::from_json(key.to_string().as_bytes(), "key.json").unwrap();
    let error = credentials.access_token(&agent).unwrap_err().to_string();
    assert!(
        error.contains("Invalid JWT Signature.") && error.contains("`key.json`"),
        "{error}"
    );
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Cloud Storage objects as the JSON API answers them, honouring
/// `ifGenerationMatch=0` (gcp-storage-emulator ignores it, so it cannot
/// test a lock).
fn storage_objects(request: &Seen, fake: &mut Fake) -> (u16, Value) {
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .map(percent_decode)
    };
    let not_found = json!({"error": {"code": 404, "message": "No such object"}});
    match request.method.as_str() {
        "POST" if path.starts_with("/upload/storage/v1/b/") => {
            let name = param("name").unwrap();
            if param("ifGenerationMatch").as_deref() == Some("0")
                && fake.objects.contains_key(&name)
            {
                return (
                    412,
                    json!({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold."}}),
                );
            }
            fake.objects
                .insert(name.clone(), serde_json::from_str(&request.body).unwrap());
            (200, json!({"name": name, "generation": "1"}))
        }
        "GET" => {
            let name = percent_decode(path.rsplit_once("/o/").unwrap().1);
            match fake.objects.get(&name) {
                Some(value) => (200, value.clone()),
                None => (404, not_found),
            }
        }
        "DELETE" => {
            let name = percent_decode(path.rsplit_once("/o/").unwrap().1);
            match fake.objects.remove(&name) {
                Some(_) => (204, json!({})),
                None => (404, not_found),
            }
        }
        _ => (
            400,
            json!({"error": {"code": 400, "message": "unexpected"}}),
        ),
    }
}

#[test]
fn the_gcs_state_lock_is_an_upload_with_if_generation_match_0() {
    use deploy_kit::state::{StateError, StateLocation, Store};
    use std::time::Duration;
    let server = serve(Box::new(storage_objects));
    let url = server.url.clone();
    let env = move |name: &str| (name == "STORAGE_EMULATOR_HOST").then(|| url.clone());
    let location = StateLocation::Gcs {
        bucket: "team-state".into(),
        prefix: "deploy".into(),
    };
    let open = || {
        Store::open(
            &location,
            std::path::Path::new("/unused"),
            "svc",
            "production",
            "run",
            &env,
        )
        .unwrap()
    };
    let first = open();
    let held = first.lock("up run", Duration::ZERO).unwrap();
    match open().lock("down run", Duration::ZERO) {
        Err(StateError::Locked { holder, .. }) => assert_eq!(*holder, held),
        other => panic!("expected Locked, got {:?}", other.map(|l| l.id)),
    }
    let state = deploy_kit::engine::State::new("gcp", "production", "run");
    first
        .push(&serde_json::to_vec(&state).unwrap(), "test")
        .unwrap();
    let pulled: deploy_kit::engine::State =
        serde_json::from_slice(&first.pull().unwrap().unwrap()).unwrap();
    assert_eq!(pulled, state);
    first.unlock(&held.id).unwrap();
    open().lock("down run", Duration::ZERO).unwrap();

    let seen = server.seen.lock().unwrap().clone();
    let uploads: Vec<&Seen> = seen.iter().filter(|r| r.method == "POST").collect();
    let lock_name = "name=deploy%2Fsvc%2Fproduction%2Frun%2Fstate.lock";
    let lock_creates: Vec<_> = uploads
        .iter()
        .filter(|r| r.target.contains(lock_name))
        .collect();
    assert_eq!(lock_creates.len(), 3, "{seen:#?}");
    for create in &lock_creates {
        assert!(
            create.target.contains("ifGenerationMatch=0"),
            "a lock is created only if absent: {}",
            create.target
        );
    }
    let state_upload = uploads
        .iter()
        .find(|r| {
            r.target
                .contains("name=deploy%2Fsvc%2Fproduction%2Frun%2Fstate.json")
        })
        .expect("the state was uploaded");
    assert!(!state_upload.target.contains("ifGenerationMatch"));
    assert!(seen.iter().any(|r| {
        r.method == "DELETE"
            && r.target
                .ends_with("/o/deploy%2Fsvc%2Fproduction%2Frun%2Fstate.lock")
    }));
}
