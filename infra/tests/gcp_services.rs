//! Secret Manager, Cloud Run and the OAuth token exchange against a fake on
//! 127.0.0.1 (feature `gcp`). Google offers no emulator for these APIs, so
//! these tests check the requests deploy-kit sends (method, path, body
//! fields) and how it reads the answers; they do not prove Google accepts
//! them. The fake answers like the v1/v2 REST references describe.

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
    services: HashMap<String, Value>,
    policies: HashMap<String, Value>,
    /// Cloud Storage objects by name (JSON bodies only: state and locks).
    objects: HashMap<String, Value>,
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn serve(handler: Box<Handler>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut fake = Fake::default();
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
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
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

/// Secret Manager v1 and Cloud Run v2, as far as deploy-kit uses them.
fn google(request: &Seen, fake: &mut Fake) -> (u16, Value) {
    let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    let path = path.trim_start_matches('/');
    let not_found = (404, json!({"error": {"code": 404, "message": "not found"}}));
    match (request.method.as_str(), path) {
        ("POST", "v1/projects/p/secrets") => {
            assert_eq!(body["replication"], json!({"automatic": {}}), "{body}");
            let id = query.strip_prefix("secretId=").unwrap();
            fake.secrets.insert(id.to_string(), Vec::new());
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
                Some(_) => (200, json!({"name": format!("projects/p/secrets/{rest}")})),
                None => not_found,
            }
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
        ("GET", policy) if policy.ends_with(":getIamPolicy") => (
            200,
            fake.policies
                .get(policy)
                .cloned()
                .unwrap_or(json!({"etag": "BwE="})),
        ),
        ("POST", policy) if policy.ends_with(":setIamPolicy") => {
            let key = policy.replace(":setIamPolicy", ":getIamPolicy");
            fake.policies.insert(key, body["policy"].clone());
            (200, body["policy"].clone())
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
        .filter(|s| s.method != "GET")
        .map(|s| format!("{} {}", s.method, s.target.split('?').next().unwrap()))
        .collect()
}

#[test]
fn cloud_run_target_gets_a_key_secret_once_and_a_public_service() {
    let server = serve(Box::new(google));
    let workspace = Workspace::new("run");
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT" | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT" => {
            Some(server.url.clone())
        }
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
        .find(|s| s.target.ends_with(":setIamPolicy"))
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

/// `auth.required` and `auth.api_keys` reach Cloud Run: the service's
/// variables are the rendered ones key for key (one settings model), and
/// the keys arrive as a Secret Manager reference, never a value.
#[test]
fn cloud_run_gets_the_rendered_settings_and_the_api_keys_by_reference() {
    let server = serve(Box::new(google));
    let workspace = Workspace::new("run-auth");
    let env = |name: &str| match name {
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT" | "DEPLOY_KIT_CLOUD_RUN_ENDPOINT" => {
            Some(server.url.clone())
        }
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
