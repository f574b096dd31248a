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
