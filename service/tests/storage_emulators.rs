//! GCS and Azure backends against their emulators on 127.0.0.1: upload
//! through the backend then fetch the signed GET URL with plain reqwest, and
//! PUT through vended upload URLs then GET back.
//!
//! `.ci/test` starts the emulators and sets `KIT_TEST_GCS_ENDPOINT` and
//! `KIT_TEST_AZURITE_ENDPOINT`; without them these tests fail (never skip)
//! and say how to start the emulator. The emulators do not check GCS
//! signatures (Azurite does check SAS), so V4 signing is pinned separately by
//! Google's vectors in `storage::gcs`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kit_service::storage::ExternalStorage;
use kit_service::storage::azure::AzureStorage;
use kit_service::storage::gcs::GcsStorage;
use kit_service::storage::settings::{Provider, StorageSettings};

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn endpoint(variable: &str, how: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("`{variable}` is not set: start the emulator first ({how}), or run `bash .ci/test`, which starts both")
    })
}

fn gcs_endpoint() -> String {
    endpoint(
        "KIT_TEST_GCS_ENDPOINT",
        "`gcp-storage-emulator start --host=127.0.0.1 --port=PORT --in-memory` then `KIT_TEST_GCS_ENDPOINT=http://127.0.0.1:PORT`",
    )
}

fn azurite_endpoint() -> String {
    endpoint(
        "KIT_TEST_AZURITE_ENDPOINT",
        "`azurite-blob --blobHost 127.0.0.1 --blobPort PORT --inMemoryPersistence --skipApiVersionCheck` then `KIT_TEST_AZURITE_ENDPOINT=http://127.0.0.1:PORT/devstoreaccount1`",
    )
}

fn settings(provider: Provider, bucket: &str, endpoint: &str) -> StorageSettings {
    let mut settings = StorageSettings::local("unused", "http://unused");
    settings.provider = provider;
    settings.bucket = Some(bucket.to_string());
    settings.endpoint = Some(endpoint.to_string());
    settings.presign_ttl = Duration::from_secs(600);
    settings
}

fn payload(size: usize) -> Bytes {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("GET the signed URL")
}

fn gcs(endpoint: &str, bucket: &str) -> GcsStorage {
    let mut env = HashMap::new();
    env.insert(
        "GOOGLE_APPLICATION_CREDENTIALS".to_string(),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gcs_service_account.json"
        )
        .to_string(),
    );
    GcsStorage::from_env(&settings(Provider::Gcs, bucket, endpoint), &env).unwrap()
}

async fn create_gcs_bucket(endpoint: &str, bucket: &str) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=kit-test"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": bucket }).to_string())
        .send()
        .await
        .expect("the GCS emulator answers");
    assert!(
        response.status().is_success() || response.status() == 409,
        "creating bucket `{bucket}`: {}",
        response.status()
    );
}

#[tokio::test]
async fn gcs_upload_then_signed_get_round_trips_bytes_and_encoding() {
    let endpoint = gcs_endpoint();
    let bucket = unique("kit-upload-");
    create_gcs_bucket(&endpoint, &bucket).await;
    let storage = gcs(&endpoint, &bucket);
    let bytes = payload(300_000);

    let url = storage.upload(bytes.clone(), Some("zstd")).await.unwrap();
    assert!(url.contains("X-Goog-Algorithm=GOOG4-RSA-SHA256"), "{url}");
    assert!(
        url.starts_with(&format!("{endpoint}/{bucket}/vgi-rpc/")),
        "{url}"
    );
    let response = get(&url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);

    // The emulator stores `contentEncoding` but does not echo it as a header
    // on downloads (real GCS does), so read it from the object resource.
    let key = url
        .split('?')
        .next()
        .unwrap()
        .split_once(&format!("/{bucket}/"))
        .unwrap()
        .1;
    let object = reqwest::get(format!(
        "{endpoint}/storage/v1/b/{bucket}/o/{}",
        key.replace('/', "%2F")
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    let object: serde_json::Value = serde_json::from_slice(&object).unwrap();
    assert_eq!(object["contentEncoding"], "zstd", "{object}");
    assert_eq!(object["contentType"], "application/vnd.apache.arrow.stream");
}

#[tokio::test]
async fn gcs_vended_upload_urls_accept_a_put_and_serve_it_back() {
    let endpoint = gcs_endpoint();
    let bucket = unique("kit-urls-");
    create_gcs_bucket(&endpoint, &bucket).await;
    let storage = gcs(&endpoint, &bucket);
    let urls = storage.upload_urls(2).await.unwrap();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0].upload_url, urls[1].upload_url);
    let bytes = payload(70_000);
    let put = reqwest::Client::new()
        .put(&urls[0].upload_url)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT: {}", put.status());
    let response = get(&urls[0].download_url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);
}

fn azure(endpoint: &str, container: &str) -> AzureStorage {
    let mut env = HashMap::new();
    env.insert(
        "AZURE_STORAGE_ACCOUNT".to_string(),
        AZURITE_ACCOUNT.to_string(),
    );
    env.insert("AZURE_STORAGE_KEY".to_string(), AZURITE_KEY.to_string());
    AzureStorage::from_env(&settings(Provider::Azure, container, endpoint), &env).unwrap()
}

/// Creates a container through an account SAS (`ss=b`, `srt=c`, `sp=c`): a
/// service SAS cannot create containers, and this keeps Shared Key signing out
/// of the test. Same HMAC as the backend's SAS, account-SAS string to sign.
async fn create_container(endpoint: &str, container: &str) {
    use kit_service::storage::azure::{SAS_VERSION, sign};
    let expiry = "2099-01-01T00:00:00Z";
    let string_to_sign = format!("{AZURITE_ACCOUNT}\nc\nb\nc\n\n{expiry}\n\n\n{SAS_VERSION}\n\n");
    let signature = sign(&base64_decode(AZURITE_KEY), &string_to_sign);
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let token = format!(
        "sv={SAS_VERSION}&ss=b&srt=c&sp=c&se={}&sig={}",
        encode(expiry),
        encode(&signature)
    );
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/{container}?restype=container&{token}"))
        .header("x-ms-version", kit_service::storage::azure::SAS_VERSION)
        .header("content-length", "0")
        .send()
        .await
        .expect("Azurite answers");
    assert!(
        response.status().is_success() || response.status() == 409,
        "creating container `{container}`: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn azure_upload_then_sas_get_round_trips_bytes_and_encoding() {
    let endpoint = azurite_endpoint();
    let container = unique("kit-upload-");
    create_container(&endpoint, &container).await;
    let storage = azure(&endpoint, &container);
    let bytes = payload(300_000);

    let url = storage.upload(bytes.clone(), Some("zstd")).await.unwrap();
    assert!(url.contains("&sr=b&sp=r&sig="), "{url}");
    // reqwest here has no decompression features, so the stored encoding
    // comes back untouched.
    let response = get(&url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-encoding"],
        "zstd",
        "{:?}",
        response.headers()
    );
    assert_eq!(response.bytes().await.unwrap(), bytes);

    // Azurite verifies SAS signatures: a tampered one is refused.
    let tampered = url.replace("&sig=", "&sig=A");
    assert_eq!(get(&tampered).await.status(), 403);
    // A read SAS does not authorize a write.
    let write = reqwest::Client::new()
        .put(&url)
        .header("x-ms-blob-type", "BlockBlob")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
}

#[tokio::test]
async fn azure_vended_upload_urls_accept_a_put_and_serve_it_back() {
    let endpoint = azurite_endpoint();
    let container = unique("kit-urls-");
    create_container(&endpoint, &container).await;
    let storage = azure(&endpoint, &container);
    let urls = storage.upload_urls(2).await.unwrap();
    assert_eq!(urls.len(), 2);
    let bytes = payload(70_000);
    let put = reqwest::Client::new()
        .put(&urls[1].upload_url)
        .header("x-ms-blob-type", "BlockBlob")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert!(
        put.status().is_success(),
        "PUT: {} {}",
        put.status(),
        put.text().await.unwrap_or_default()
    );
    let response = get(&urls[1].download_url).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);
}

// --- Azure by managed identity: user delegation keys and SAS ---------------

fn azurite_oauth() -> (String, reqwest::Client) {
    let endpoint = endpoint(
        "KIT_TEST_AZURITE_OAUTH_ENDPOINT",
        "`azurite-blob --oauth basic --cert CERT --key KEY ...` (HTTPS) then `KIT_TEST_AZURITE_OAUTH_ENDPOINT=https://127.0.0.1:PORT/devstoreaccount1` and `KIT_TEST_AZURITE_CA=CERT`; `.ci/lib.sh` `start_azurite_oauth` does both",
    );
    let ca = endpoint_file("KIT_TEST_AZURITE_CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM certificate"))
        .build()
        .unwrap();
    (endpoint, client)
}

fn endpoint_file(variable: &str) -> Vec<u8> {
    let path = std::env::var(variable)
        .unwrap_or_else(|_| panic!("`{variable}` is not set: run `bash .ci/test`"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("`{variable}`: `{path}`: {e}"))
}

/// An Entra ID access token as Azurite's `--oauth basic` checks it
/// (audience, issuer, times; the signature is not verified by the emulator).
fn access_token() -> String {
    use base64::Engine;
    let encode = |value: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.{}",
        encode(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        encode(serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "oid": "5e5e5e5e-0000-4000-8000-000000000001",
            "tid": "ab1f708d-50f6-404c-a006-d71b2ac7a606",
        })),
        encode(serde_json::json!("not-verified")),
    )
}

/// One request a [`FakeHttp`] received.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 server answering every request with one canned
/// status and body, recording what it got.
struct FakeHttp {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl FakeHttp {
    async fn start(status: u16, content_type: &'static str, body: String) -> FakeHttp {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(at);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or_default().split(' ');
                let request = Recorded {
                    method: first.next().unwrap_or_default().to_string(),
                    target: first.next().unwrap_or_default().to_string(),
                    headers: lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                        .collect(),
                };
                let length: usize = request
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buffer.len() < head_end + 4 + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                recorded.lock().unwrap().push(request);
                let response = format!(
                    "HTTP/1.1 {status} Fake\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        FakeHttp { url, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// The App Service managed identity endpoint: a token for storage.
async fn fake_identity() -> FakeHttp {
    let body = serde_json::json!({
        "access_token": access_token(),
        "expires_on": "4102444800",
        "resource": "https://storage.azure.com/",
        "token_type": "Bearer",
    })
    .to_string();
    FakeHttp::start(200, "application/json", body).await
}

fn identity_env(identity: &FakeHttp) -> HashMap<String, String> {
    [
        ("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT.to_string()),
        ("IDENTITY_ENDPOINT", format!("{}/msi/token", identity.url)),
        ("IDENTITY_HEADER", "identity-header-value".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// No account key anywhere: the backend gets a token from the (fake)
/// managed identity endpoint, a user delegation key from Azurite with it
/// (`--oauth basic`, HTTPS), and signs user delegation SAS URLs that Azurite
/// checks: upload then GET, vended PUT then GET, a tampered signature
/// refused. The identity endpoint is asked once (the key is cached), with
/// the documented resource, api-version and header.
#[tokio::test]
async fn azure_managed_identity_signs_user_delegation_sas_urls_azurite_accepts() {
    let (endpoint, client) = azurite_oauth();
    let container = unique("kit-identity-");
    let created = client
        .put(format!("{endpoint}/{container}?restype=container"))
        .bearer_auth(access_token())
        .header("x-ms-version", kit_service::storage::azure::SAS_VERSION)
        .header("content-length", "0")
        .send()
        .await
        .expect("Azurite answers");
    assert!(
        created.status().is_success() || created.status() == 409,
        "creating `{container}`: {}",
        created.status()
    );
    let identity = fake_identity().await;
    let storage = AzureStorage::from_env(
        &settings(Provider::Azure, &container, &endpoint),
        &identity_env(&identity),
    )
    .unwrap()
    .with_client(client.clone());

    let bytes = payload(200_000);
    let url = storage.upload(bytes.clone(), Some("zstd")).await.unwrap();
    for field in [
        "&sr=b&sp=r&",
        "&skoid=5e5e5e5e-0000-4000-8000-000000000001&",
        "&sks=b&",
        "&sig=",
    ] {
        assert!(url.contains(field), "{field} in {url}");
    }
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);
    let tampered = url.replace("&sig=", "&sig=A");
    assert_eq!(client.get(&tampered).send().await.unwrap().status(), 403);
    let widened = url.replace("&sp=r&", "&sp=rw&");
    assert_eq!(client.get(&widened).send().await.unwrap().status(), 403);

    let urls = storage.upload_urls(2).await.unwrap();
    let second = payload(50_000);
    let put = client
        .put(&urls[0].upload_url)
        .header("x-ms-blob-type", "BlockBlob")
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT: {}", put.status());
    let back = client.get(&urls[0].download_url).send().await.unwrap();
    assert_eq!(back.status(), 200);
    assert_eq!(back.bytes().await.unwrap(), second);

    let requests = identity.requests();
    assert_eq!(
        requests.len(),
        1,
        "the delegation key is cached: {requests:?}"
    );
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    let parsed = url::Url::parse(&format!("http://x{}", request.target)).unwrap();
    assert_eq!(parsed.path(), "/msi/token");
    let query: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query["resource"], "https://storage.azure.com/");
    assert_eq!(query["api-version"], "2019-08-01");
    assert_eq!(
        request.header("x-identity-header"),
        Some("identity-header-value")
    );
}

/// A 403 on Get User Delegation Key (the identity lacks the role) names
/// the role to grant; the request carried the identity's bearer token.
#[tokio::test]
async fn a_refused_delegation_key_names_the_missing_role() {
    let identity = fake_identity().await;
    let storage_account = FakeHttp::start(
        403,
        "application/xml",
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.</Message></Error>".into(),
    )
    .await;
    let storage = AzureStorage::from_env(
        &settings(
            Provider::Azure,
            "kit",
            &format!("{}/{AZURITE_ACCOUNT}", storage_account.url),
        ),
        &identity_env(&identity),
    )
    .unwrap();
    let error = storage.upload(payload(10), None).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("refused a user delegation key to the managed identity (HTTP 403): the identity needs the `Storage Blob Data Contributor` role"),
        "{text}"
    );
    assert!(text.contains("AuthorizationPermissionMismatch"), "{text}");
    let requests = storage_account.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].target,
        format!("/{AZURITE_ACCOUNT}/?restype=service&comp=userdelegationkey")
    );
    assert!(
        requests[0]
            .header("authorization")
            .is_some_and(|v| v.starts_with("Bearer ey")),
        "{requests:?}"
    );
    assert!(
        requests[0]
            .header("x-ms-version")
            .is_some_and(|v| v >= "2020-02-10"),
        "{requests:?}"
    );
}
