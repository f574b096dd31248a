//! GCS signed URLs without a key file (Cloud Run): the runtime account's
//! token and e-mail from a fake metadata server, the signature from a fake
//! IAM Credentials `signBlob`, both on loopback and recording what they
//! were sent. The fake signs with the real RSA key of the test key file,
//! so the URL from the IAM path must equal, byte for byte, the one the
//! key-file path signs locally for the same instant; the signature is also
//! checked against the key's public half, and the URLs are fetched from
//! gcp-storage-emulator (`KIT_TEST_GCS_ENDPOINT`, started by `.ci/test` and
//! `.ci/test-gcp`; the emulator accepts any signature, so the equality and
//! the public-key check are what pin the signature).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use kit_service::storage::gcs::GcsStorage;
use kit_service::storage::rsa_key::RsaSigningKey;
use kit_service::storage::settings::{Provider, StorageSettings};
use kit_service::storage::{ExternalStorage, StorageError};

const KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gcs_service_account.json"
);

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

struct Fake {
    /// `host:port`, the form of `GCE_METADATA_HOST`.
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn key_file() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(KEY_FILE).unwrap()).unwrap()
}

/// The metadata server and IAM Credentials in one: the account is the key
/// file's, and `signBlob` signs with its private key unless `deny`.
fn fake(deny: bool) -> Fake {
    let key = key_file();
    let email = key["client_email"].as_str().unwrap().to_string();
    let signer = RsaSigningKey::from_pem(key["private_key"].as_str().unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut tokens = 0;
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
            let mut headers = HashMap::new();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                }
            }
            let length = headers
                .get("content-length")
                .map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request = Seen {
                method,
                target,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            log.lock().unwrap().push(request.clone());
            let account = "/computeMetadata/v1/instance/service-accounts/default";
            let flavored =
                request.headers.get("metadata-flavor").map(String::as_str) == Some("Google");
            let sign_path = format!(
                "/v1/projects/-/serviceAccounts/{}:signBlob",
                email.replace('@', "%40")
            );
            let (status, kind, answer) = match (request.method.as_str(), request.target.as_str()) {
                (_, path) if path.starts_with("/computeMetadata/") && !flavored => {
                    (403, "text/plain", "Missing Metadata-Flavor:Google header.".to_string())
                }
                ("GET", path) if path == format!("{account}/token") => {
                    tokens += 1;
                    (
                        200,
                        "application/json",
                        serde_json::json!({"access_token": format!("meta-token-{tokens}"), "expires_in": 3599, "token_type": "Bearer"}).to_string(),
                    )
                }
                ("GET", path) if path == format!("{account}/email") => {
                    (200, "application/text", email.clone())
                }
                ("POST", path) if path == sign_path && deny => (
                    403,
                    "application/json",
                    serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                        "message": "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist)."}})
                    .to_string(),
                ),
                ("POST", path) if path == sign_path => {
                    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(body["payload"].as_str().unwrap())
                        .unwrap();
                    let signed = base64::engine::general_purpose::STANDARD.encode(signer.sign(&payload));
                    (
                        200,
                        "application/json",
                        serde_json::json!({"keyId": "k1", "signedBlob": signed}).to_string(),
                    )
                }
                _ => (404, "text/plain", format!("fake: no {} {}", request.method, request.target)),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    Fake { host, seen }
}

fn settings(bucket: &str, endpoint: &str) -> StorageSettings {
    let mut settings = StorageSettings::local("unused", "http://unused");
    settings.provider = Provider::Gcs;
    settings.bucket = Some(bucket.to_string());
    settings.endpoint = Some(endpoint.to_string());
    settings.presign_ttl = Duration::from_secs(600);
    settings
}

/// A backend signing through `fake` (no key file).
fn through_iam(fake: &Fake, bucket: &str, endpoint: &str) -> GcsStorage {
    let env: HashMap<String, String> = [
        ("GCE_METADATA_HOST".to_string(), fake.host.clone()),
        ("KIT_GCS_IAM_ENDPOINT".to_string(), fake.url()),
    ]
    .into();
    GcsStorage::from_env(&settings(bucket, endpoint), &env).unwrap()
}

/// A backend signing with the key file.
fn with_key_file(bucket: &str, endpoint: &str) -> GcsStorage {
    let env: HashMap<String, String> = [(
        "GOOGLE_APPLICATION_CREDENTIALS".to_string(),
        KEY_FILE.to_string(),
    )]
    .into();
    GcsStorage::from_env(&settings(bucket, endpoint), &env).unwrap()
}

fn emulator() -> String {
    std::env::var("KIT_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!("`KIT_TEST_GCS_ENDPOINT` is not set: run `bash .ci/test-gcp` (or `.ci/test`), which starts gcp-storage-emulator")
    })
}

async fn create_bucket(endpoint: &str, bucket: &str) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=kit-test"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": bucket }).to_string())
        .send()
        .await
        .expect("the GCS emulator answers");
    assert!(
        response.status().is_success() || response.status() == 409,
        "{}",
        response.status()
    );
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn iam_signed_urls_equal_the_key_files_and_the_emulator_serves_them() {
    let endpoint = emulator();
    let bucket = format!("kit-iam-{}", std::process::id());
    create_bucket(&endpoint, &bucket).await;
    let fake = fake(false);
    let iam = through_iam(&fake, &bucket, &endpoint);
    let local = with_key_file(&bucket, &endpoint);
    let email = key_file()["client_email"].as_str().unwrap().to_string();

    // Same instant, same object: the same URL from both signers.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for method in ["GET", "PUT"] {
        let signed = iam
            .presign_at(method, "vgi-rpc/a b.arrow", at)
            .await
            .unwrap();
        let expected = local
            .presign_at(method, "vgi-rpc/a b.arrow", at)
            .await
            .unwrap();
        assert_eq!(signed, expected, "{method}");
        // And the signature verifies with the key's public half.
        let signature = hex_decode(signed.url.rsplit_once("X-Goog-Signature=").unwrap().1);
        let key = RsaSigningKey::from_pem(key_file()["private_key"].as_str().unwrap()).unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public_key_der(),
        )
        .verify(signed.string_to_sign.as_bytes(), &signature)
        .expect("the signature verifies with the public key");
    }

    // What the fakes were sent: the metadata header, the e-mail in the
    // signBlob path, the metadata token as bearer, the string to sign as
    // the payload.
    let seen = fake.seen();
    let sign_blobs: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target.ends_with(":signBlob"))
        .collect();
    assert_eq!(sign_blobs.len(), 2);
    for (request, method) in sign_blobs.iter().zip(["GET", "PUT"]) {
        assert_eq!(
            request.target,
            format!(
                "/v1/projects/-/serviceAccounts/{}:signBlob",
                email.replace('@', "%40")
            )
        );
        assert_eq!(request.headers["authorization"], "Bearer meta-token-1");
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(body["payload"].as_str().unwrap())
            .unwrap();
        let expected = local
            .presign_at(method, "vgi-rpc/a b.arrow", at)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(payload).unwrap(), expected.string_to_sign);
    }
    let metadata: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target.starts_with("/computeMetadata/"))
        .collect();
    assert!(
        metadata
            .iter()
            .all(|s| s.headers["metadata-flavor"] == "Google")
    );

    // An upload (anonymous to the emulator) and its URL, then vended
    // upload URLs: PUT through one, GET through the other.
    let bytes: Bytes = (0..100_000).map(|i| (i * 7 % 251) as u8).collect();
    let url = iam.upload(bytes.clone(), None).await.unwrap();
    assert!(
        url.contains(&format!("X-Goog-Credential={}", email.replace('@', "%40"))),
        "{url}"
    );
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);
    let vended = iam.upload_urls(1).await.unwrap().remove(0);
    let put = reqwest::Client::new()
        .put(&vended.upload_url)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    assert_eq!(
        reqwest::get(&vended.download_url)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        bytes
    );

    // The token and the e-mail were asked once for all of it.
    let seen = fake.seen();
    let count = |suffix: &str| seen.iter().filter(|s| s.target.ends_with(suffix)).count();
    assert_eq!(count("/default/token"), 1, "{seen:#?}");
    assert_eq!(count("/default/email"), 1, "{seen:#?}");
    assert_eq!(count(":signBlob"), 5);
}

#[tokio::test]
async fn an_unreachable_metadata_server_fails_the_first_upload_naming_it() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = closed.local_addr().unwrap().to_string();
    drop(closed);
    let env: HashMap<String, String> = [("GCE_METADATA_HOST".to_string(), host.clone())].into();
    // Startup asks nothing: the backend is built.
    let storage = GcsStorage::from_env(&settings("b", "http://127.0.0.1:9"), &env).unwrap();
    let error = storage.upload_urls(1).await.err().unwrap();
    assert!(
        matches!(error, StorageError::Unreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "`http://{host}/computeMetadata/v1/instance/service-accounts/default/"
        )) && message.contains("metadata server")
            && message.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{message}"
    );
}

#[tokio::test]
async fn a_refused_sign_blob_names_the_missing_role() {
    let fake = fake(true);
    let storage = through_iam(&fake, "b", "http://127.0.0.1:9");
    let error = storage.upload_urls(1).await.err().unwrap();
    assert!(matches!(error, StorageError::Denied { .. }), "{error:?}");
    let message = error.to_string();
    let email = key_file()["client_email"].as_str().unwrap().to_string();
    assert!(
        message.contains("roles/iam.serviceAccountTokenCreator")
            && message.contains(&email)
            && message.contains("iam.serviceAccounts.signBlob"),
        "{message}"
    );
}
