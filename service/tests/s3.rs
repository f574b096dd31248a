//! The S3 backend against a real S3-compatible server: SeaweedFS on
//! 127.0.0.1 with an S3 identity, so pre-signed signatures are enforced.
//! `.ci/test` starts it (`start_seaweedfs` in `.ci/lib.sh`) and exports
//! `KIT_TEST_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
//! Without them every test here fails, saying how to start it: a storage test
//! that passes without storage proves nothing.
//!
//! Objects are written by [`S3Storage`] and read back by the fetch client,
//! exactly the path a pointer takes, under a fresh prefix per test.
#![cfg(feature = "s3")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kit_service::storage::fetch::{FetchError, Fetcher};
use kit_service::storage::s3::{S3Storage, client_builder, sdk};
use kit_service::storage::settings::{FetchSettings, Provider};
use kit_service::storage::{ExternalStorage, StorageError, StorageSettings};
use sha2::{Digest, Sha256};

const BUCKET: &str = "kit-test";

struct Seaweed {
    endpoint: String,
}

fn seaweedfs() -> Seaweed {
    let missing: Vec<&str> = [
        "KIT_TEST_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .into_iter()
    .filter(|name| std::env::var(name).map_or(true, |v| v.is_empty()))
    .collect();
    assert!(
        missing.is_empty(),
        "{} not set: these tests need SeaweedFS. Run `.ci/test`, or start it by hand:\n  \
         source .ci/lib.sh && ensure_python && ensure_seaweedfs && start_seaweedfs \"$(mktemp -d)\"\n  \
         cargo test -p kit-service --features s3 --test s3\n  stop_services",
        missing.join(", ")
    );
    Seaweed {
        endpoint: std::env::var("KIT_TEST_S3_ENDPOINT").unwrap(),
    }
}

fn settings(seaweed: &Seaweed, bucket: &str) -> StorageSettings {
    let mut settings = StorageSettings::local("unused", "http://unused");
    settings.provider = Provider::S3;
    settings.bucket = Some(bucket.to_string());
    settings.endpoint = Some(seaweed.endpoint.clone());
    settings.prefix = format!("test-{}/", kit_service::http::random_hex(6));
    settings.presign_ttl = Duration::from_secs(300);
    settings
}

/// The backend over `bucket`, created if missing, under a fresh prefix.
async fn storage() -> (S3Storage, StorageSettings) {
    let seaweed = seaweedfs();
    let settings = settings(&seaweed, BUCKET);
    let storage = S3Storage::new(&settings).unwrap();
    let created = storage
        .client()
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await;
    if let Err(error) = created {
        let code = sdk::error::ProvideErrorMetadata::code(&error).unwrap_or_default();
        assert!(
            matches!(code, "BucketAlreadyOwnedByYou" | "BucketAlreadyExists"),
            "creating bucket `{BUCKET}`: {}",
            sdk::error::DisplayErrorContext(&error)
        );
    }
    (storage, settings)
}

fn fetcher(settings: &StorageSettings) -> Fetcher {
    Fetcher::new(FetchSettings {
        allowlist: vec![settings.endpoint.clone().unwrap()],
        ..FetchSettings::default()
    })
    .unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic incompressible-ish bytes (no RNG crate needed).
fn payload(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn key_of(url: &str) -> String {
    let path = url::Url::parse(url).unwrap().path().to_string();
    path.strip_prefix(&format!("/{BUCKET}/"))
        .unwrap_or_else(|| panic!("`{path}` is not a path-style URL in bucket `{BUCKET}`"))
        .to_string()
}

#[tokio::test]
async fn upload_then_presigned_get_round_trips_with_content_encoding() {
    let (storage, settings) = storage().await;
    let raw = payload(3 << 20, 1);
    let compressed = zstd::bulk::compress(&raw, 3).unwrap();
    let url = storage
        .upload(Bytes::from(compressed), Some("zstd"))
        .await
        .unwrap();
    assert!(
        url.contains("X-Amz-Signature="),
        "not a pre-signed URL: {url}"
    );
    let key = key_of(&url);
    assert!(
        key.starts_with(&settings.prefix),
        "`{key}` is outside the prefix"
    );

    let fetched = fetcher(&settings)
        .fetch(&url, Some(&sha256(&raw)))
        .await
        .unwrap();
    assert!(
        fetched == raw,
        "the fetched bytes differ from the uploaded ones"
    );

    let head = storage
        .client()
        .await
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_encoding(), Some("zstd"));
    let listed = storage
        .client()
        .await
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(&settings.prefix)
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, vec![key.as_str()]);
}

#[tokio::test]
async fn upload_urls_accept_a_put_and_serve_it_back() {
    let (storage, settings) = storage().await;
    let urls = storage.upload_urls(2).await.unwrap();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0].upload_url, urls[1].upload_url);
    let body = payload(2 << 20, 2);
    let client = reqwest::Client::new();
    let put = client
        .put(&urls[0].upload_url)
        .header("content-type", "application/vnd.apache.arrow.stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT returned {}", put.status());
    let fetched = fetcher(&settings)
        .fetch(&urls[0].download_url, Some(&sha256(&body)))
        .await
        .unwrap();
    assert!(fetched == body);
    assert!(key_of(&urls[0].download_url).starts_with(&settings.prefix));

    // A GET signature does not authorize a PUT to the same key.
    let put_with_get_url = client
        .put(&urls[1].download_url)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put_with_get_url.status(), reqwest::StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tampered_signature_is_refused_by_the_store() {
    let (storage, settings) = storage().await;
    let url = storage
        .upload(Bytes::from_static(b"signed bytes"), None)
        .await
        .unwrap();
    let parsed = url::Url::parse(&url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "X-Amz-Signature" {
                let flipped = if v.starts_with('0') { "1" } else { "0" };
                format!("{flipped}{}", &v[1..])
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let mut tampered = parsed.clone();
    tampered.query_pairs_mut().clear().extend_pairs(pairs);
    assert_ne!(tampered.as_str(), url);
    let error = fetcher(&settings)
        .fetch(tampered.as_str(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::Status { status: 403, .. }),
        "expected HTTP 403, got {error}"
    );
    // The untouched URL still works, so the 403 is the signature's doing.
    assert_eq!(
        fetcher(&settings).fetch(&url, None).await.unwrap(),
        Bytes::from_static(b"signed bytes")
    );
}

#[tokio::test]
async fn corrupted_object_and_wrong_sha256_give_a_checksum_error() {
    let (storage, settings) = storage().await;
    let raw = payload(1 << 20, 3);
    let url = storage
        .upload(Bytes::from(raw.clone()), None)
        .await
        .unwrap();
    let fetcher = fetcher(&settings);

    let wrong = sha256(b"something else");
    let error = fetcher.fetch(&url, Some(&wrong)).await.unwrap_err();
    assert!(
        matches!(&error, FetchError::Checksum { expected, .. } if *expected == wrong),
        "{error}"
    );

    let mut corrupted = raw.clone();
    corrupted[raw.len() / 2] ^= 0xff;
    storage
        .client()
        .await
        .put_object()
        .bucket(BUCKET)
        .key(key_of(&url))
        .body(sdk::primitives::ByteStream::from(corrupted))
        .send()
        .await
        .unwrap();
    let error = fetcher.fetch(&url, Some(&sha256(&raw))).await.unwrap_err();
    assert!(matches!(error, FetchError::Checksum { .. }), "{error}");
    assert!(
        error.to_string().contains("SHA-256 checksum mismatch"),
        "{error}"
    );
}

#[tokio::test]
async fn large_object_is_fetched_with_parallel_ranges() {
    let (storage, settings) = storage().await;
    let raw = payload(96 << 20, 4);
    let started = Instant::now();
    let url = storage
        .upload(Bytes::from(raw.clone()), None)
        .await
        .unwrap();
    let uploaded = started.elapsed();
    let fetcher = fetcher(&settings);
    let started = Instant::now();
    let fetched = fetcher.fetch(&url, Some(&sha256(&raw))).await.unwrap();
    let fetched_in = started.elapsed();
    assert!(fetched == raw);
    let requests = fetcher
        .stats()
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    // A one-byte probe, then 12 ranges of 8 MiB.
    assert!(
        requests >= 13,
        "expected ranged GETs, saw {requests} requests"
    );
    println!(
        "96 MiB: PutObject {:.2} s, fetch {:.2} s in {requests} requests",
        uploaded.as_secs_f64(),
        fetched_in.as_secs_f64()
    );
}

#[tokio::test]
async fn wrong_credentials_are_denied_and_name_the_bucket() {
    let seaweed = seaweedfs();
    let settings = settings(&seaweed, BUCKET);
    let credentials =
        sdk::config::Credentials::new("not-a-key", "not-a-secret", None, None, "test");
    let client = sdk::Client::from_conf(
        client_builder(&settings)
            .unwrap()
            .credentials_provider(credentials)
            .build(),
    );
    let storage = S3Storage::with_client(client, &settings).unwrap();
    let error = storage
        .upload(Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Denied { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("`{BUCKET}`")),
        "{error}"
    );
}

#[tokio::test]
async fn missing_bucket_fails_and_names_it() {
    let seaweed = seaweedfs();
    let bucket = format!("kit-missing-{}", kit_service::http::random_hex(4));
    let storage = S3Storage::new(&settings(&seaweed, &bucket)).unwrap();
    let error = storage
        .upload(Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Failed { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("`{bucket}`")),
        "{error}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_reported_as_unreachable() {
    let seaweed = Seaweed {
        // Bound and closed at once: nothing listens there.
        endpoint: {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        },
    };
    let settings = settings(&seaweed, BUCKET);
    let credentials = sdk::config::Credentials::new("key", "secret", None, None, "test");
    let client = sdk::Client::from_conf(
        client_builder(&settings)
            .unwrap()
            .credentials_provider(credentials)
            .build(),
    );
    let storage = S3Storage::with_client(client, &settings).unwrap();
    let error = storage
        .upload(Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Unreachable { .. }), "{error}");
    assert!(
        error.to_string().contains(&format!("`{BUCKET}`")),
        "{error}"
    );
}
