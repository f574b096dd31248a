//! Google credentials as users have them (issue 16, item 6, GCP part):
//! workload identity federation (`external_account`, subject token from a
//! file or a URL, with and without impersonation), `gcloud auth
//! application-default login --impersonate-service-account` files, and the
//! metadata server. There is no emulator for Google's STS, IAM Credentials
//! or metadata server: one recording fake on loopback answers all three, and
//! each test asserts what it received (grant, audience, subject token,
//! bearer, headers), not only the token that came back.
#![cfg(feature = "gcp")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use deploy_kit::gcp::Credentials;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

impl Seen {
    /// A form body as a map.
    fn form(&self) -> HashMap<String, String> {
        self.body
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    }
}

fn decode(text: &str) -> String {
    let bytes = text.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The fake Google: STS `/v1/token`, OAuth `/token`, IAM Credentials
/// `...:generateAccessToken`, the metadata server's token, and a subject
/// token URL. `refuse_sts` makes the STS answer 400.
struct Google {
    base: String,
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Google {
    fn start(refuse_sts: bool) -> Google {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                    }
                }
                let length = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let seen = Seen {
                    method,
                    target: target.clone(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                record.lock().unwrap().push(seen.clone());
                let path = target.split('?').next().unwrap_or_default();
                let (status, answer) = if path == "/v1/token" && refuse_sts {
                    (400, r#"{"error":"invalid_grant","error_description":"The audience does not match"}"#.to_string())
                } else if path == "/v1/token" {
                    (200, r#"{"access_token":"federated-token","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#.to_string())
                } else if path == "/token" {
                    (
                        200,
                        r#"{"access_token":"user-token","expires_in":3600}"#.to_string(),
                    )
                } else if path.ends_with(":generateAccessToken") {
                    (200, r#"{"accessToken":"impersonated-token","expireTime":"2099-01-01T00:00:00Z"}"#.to_string())
                } else if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
                    if seen.headers.get("metadata-flavor").map(String::as_str) == Some("Google") {
                        (200, r#"{"access_token":"metadata-token","expires_in":3599,"token_type":"Bearer"}"#.to_string())
                    } else {
                        (403, "Missing Metadata-Flavor:Google header.".to_string())
                    }
                } else if path == "/subject" {
                    (200, r#"{"value":"oidc-from-url"}"#.to_string())
                } else {
                    (404, "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Google {
            base: format!("http://{host}"),
            host,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_defaults()
}

/// `Credentials::discover` with only `vars` set (HOME points at `home`).
fn discover(home: &Path, vars: &[(&str, String)]) -> Result<Option<Credentials>, String> {
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    env.insert("HOME".into(), home.display().to_string());
    Credentials::discover(&|name: &str| env.get(name).cloned()).map_err(|e| e.to_string())
}

const SA: &str = "deployer@acme-prod.iam.gserviceaccount.com";

#[test]
fn workload_identity_from_a_file_is_exchanged_then_impersonated() {
    let google = Google::start(false);
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("oidc.jwt");
    std::fs::write(&subject, "eyJ.ci-oidc-subject.sig\n").unwrap();
    let audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github";
    let file = dir.path().join("wif.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "type": "external_account",
            "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.base),
            "credential_source": {"file": subject, "format": {"type": "text"}},
            "service_account_impersonation_url": format!("{}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken", google.base),
        })
        .to_string(),
    )
    .unwrap();
    let credentials = discover(
        dir.path(),
        &[("GOOGLE_APPLICATION_CREDENTIALS", file.display().to_string())],
    )
    .unwrap()
    .expect("credentials from the file");
    assert!(
        !format!("{credentials:?}").contains("ci-oidc-subject"),
        "Debug holds no subject token"
    );
    let agent = agent();
    assert_eq!(
        credentials.access_token(&agent).unwrap(),
        "impersonated-token"
    );
    assert_eq!(
        credentials.access_token(&agent).unwrap(),
        "impersonated-token"
    );

    let seen = google.seen();
    assert_eq!(
        seen.len(),
        2,
        "one exchange, one impersonation, then the cache: {seen:#?}"
    );
    let exchange = &seen[0];
    assert_eq!(
        (exchange.method.as_str(), exchange.target.as_str()),
        ("POST", "/v1/token")
    );
    let form = exchange.form();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(form["audience"], audience);
    assert_eq!(form["subject_token"], "eyJ.ci-oidc-subject.sig");
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(
        form["requested_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        form["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    let impersonation = &seen[1];
    assert_eq!(
        impersonation.target,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
    );
    assert_eq!(
        impersonation.headers["authorization"],
        "Bearer federated-token"
    );
    let body: serde_json::Value = serde_json::from_str(&impersonation.body).unwrap();
    assert_eq!(
        body["scope"],
        serde_json::json!(["https://www.googleapis.com/auth/cloud-platform"])
    );
    assert_eq!(body["lifetime"], "3600s");
}

#[test]
fn workload_identity_from_a_url_reads_the_json_field_with_its_headers() {
    let google = Google::start(false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wif.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/gitlab",
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "token_url": format!("{}/v1/token", google.base),
            "credential_source": {
                "url": format!("{}/subject", google.base),
                "headers": {"Authorization": "bearer runner-request-token"},
                "format": {"type": "json", "subject_token_field_name": "value"},
            },
        })
        .to_string(),
    )
    .unwrap();
    let credentials = discover(
        dir.path(),
        &[("GOOGLE_APPLICATION_CREDENTIALS", file.display().to_string())],
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        credentials.access_token(&agent()).unwrap(),
        "federated-token"
    );
    let seen = google.seen();
    assert_eq!(seen[0].target, "/subject");
    assert_eq!(
        seen[0].headers["authorization"],
        "bearer runner-request-token"
    );
    assert_eq!(seen[1].form()["subject_token"], "oidc-from-url");
    assert_eq!(seen.len(), 2, "no impersonation configured: {seen:#?}");
}

#[test]
fn an_impersonated_adc_file_refreshes_the_user_then_becomes_the_service_account() {
    let google = Google::start(false);
    let home = tempfile::tempdir().unwrap();
    let gcloud = home.path().join(".config/gcloud");
    std::fs::create_dir_all(&gcloud).unwrap();
    std::fs::write(
        gcloud.join("application_default_credentials.json"),
        serde_json::json!({
            "type": "impersonated_service_account",
            "service_account_impersonation_url": format!("{}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken", google.base),
            "delegates": ["projects/-/serviceAccounts/hop@acme-prod.iam.gserviceaccount.com"],
            "source_credentials": {
                "type": "authorized_user",
                "client_id": "client-id",
                "client_secret": "client-secret",
                "refresh_token": "user-refresh-token",
                "token_uri": format!("{}/token", google.base),
            },
        })
        .to_string(),
    )
    .unwrap();
    let credentials = discover(home.path(), &[]).unwrap().expect("the ADC file");
    assert_eq!(
        credentials.access_token(&agent()).unwrap(),
        "impersonated-token"
    );
    let seen = google.seen();
    assert_eq!(seen[0].target, "/token");
    assert_eq!(seen[0].form()["grant_type"], "refresh_token");
    assert_eq!(seen[0].form()["refresh_token"], "user-refresh-token");
    assert_eq!(seen[1].headers["authorization"], "Bearer user-token");
    let body: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(
        body["delegates"],
        serde_json::json!(["projects/-/serviceAccounts/hop@acme-prod.iam.gserviceaccount.com"])
    );
}

#[test]
fn without_a_file_the_metadata_server_is_asked_with_its_header() {
    let google = Google::start(false);
    let home = tempfile::tempdir().unwrap();
    let credentials = discover(home.path(), &[("GCE_METADATA_HOST", google.host.clone())])
        .unwrap()
        .expect("the metadata server");
    assert_eq!(
        credentials.access_token(&agent()).unwrap(),
        "metadata-token"
    );
    let seen = google.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert!(
        seen[0]
            .target
            .starts_with("/computeMetadata/v1/instance/service-accounts/default/token?scopes="),
        "{}",
        seen[0].target
    );
    assert_eq!(seen[0].headers["metadata-flavor"], "Google");
    let on_google_cloud = std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|name| name.contains("Google"));
    assert_eq!(
        discover(home.path(), &[]).unwrap().is_some(),
        on_google_cloud,
        "no file and no metadata host: no credentials (off Google Cloud)"
    );
}

#[test]
fn federation_failures_name_the_file_and_never_the_subject_token() {
    let google = Google::start(true);
    let dir = tempfile::tempdir().unwrap();
    let subject = dir.path().join("oidc.jwt");
    let wif = |source: serde_json::Value| {
        let file = dir.path().join("wif.json");
        std::fs::write(
            &file,
            serde_json::json!({
                "type": "external_account",
                "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/github",
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": format!("{}/v1/token", google.base),
                "credential_source": source,
            })
            .to_string(),
        )
        .unwrap();
        discover(
            dir.path(),
            &[("GOOGLE_APPLICATION_CREDENTIALS", file.display().to_string())],
        )
    };
    // The token file is not there (the CI step that writes it did not run).
    let credentials = wif(serde_json::json!({"file": subject})).unwrap().unwrap();
    let error = credentials.access_token(&agent()).unwrap_err().to_string();
    assert!(
        error.contains("oidc.jwt") && error.contains("wif.json"),
        "{error}"
    );
    // STS refuses: its reason, never the token.
    std::fs::write(&subject, "eyJ.secret-subject.sig").unwrap();
    let error = credentials.access_token(&agent()).unwrap_err().to_string();
    assert!(error.contains("audience does not match"), "{error}");
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(!error.contains("secret-subject"), "{error}");
    // Sources deploy-kit does not run are refused when the file is read.
    let error = wif(serde_json::json!({"executable": {"command": "/bin/true"}})).unwrap_err();
    assert!(error.contains("credential_source"), "{error}");
}
