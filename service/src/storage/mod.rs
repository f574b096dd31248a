//! External object storage for batches too large for the HTTP body.
//!
//! Platforms cap request and response bodies (Lambda 6 MB, Cloud Run 32 MiB),
//! so vgi-rpc moves oversized batches to a bucket and sends a zero-row pointer
//! batch carrying `vgi_rpc.location` instead. A backend does three things:
//! upload bytes (with a content encoding) and return a download URL, vend
//! upload/download URL pairs for large *requests*, and tell what it is called.
//! Downloads never go through a backend: the fetch client ([`fetch`]) reads the
//! URL like any client would, with the same safety rules.
//!
//! Backends: `local` (the embedded default: kit-service serves the objects
//! itself under HMAC-signed URLs), `s3` (feature `s3`), `gcs` (V4 signed URLs),
//! `azure` (SAS URLs), and `fake`, the conformance suite's fake store.

pub mod azure;
pub mod fake;
pub mod fetch;
pub mod gcs;
pub mod local;
pub mod rsa_key;
#[cfg(feature = "s3")]
pub mod s3;
pub mod settings;
pub(crate) mod signing;

use std::time::SystemTime;

use bytes::Bytes;

pub use settings::{Compression, StorageSettings};

use crate::rpc::BoxFuture;

/// One upload URL pair, as `__upload_url__/init` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadUrl {
    /// Where the client PUTs the raw IPC bytes.
    pub upload_url: String,
    /// What the client then sends in `vgi_rpc.location`.
    pub download_url: String,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage backend `{backend}` is unreachable: {message}")]
    Unreachable {
        backend: &'static str,
        message: String,
    },
    #[error("storage backend `{backend}` refused the credentials: {message}")]
    Denied {
        backend: &'static str,
        message: String,
    },
    #[error("storage backend `{backend}` failed: {message}")]
    Failed {
        backend: &'static str,
        message: String,
    },
    #[error("storage configuration: {0}")]
    Config(String),
}

/// A place to put externalized batches.
pub trait ExternalStorage: Send + Sync {
    /// A short name for logs and errors (`local`, `s3`, ...).
    fn name(&self) -> &'static str;

    /// Stores `bytes` under a fresh key below the configured prefix and returns
    /// a download URL valid for the presign TTL. `content_encoding` (e.g.
    /// `zstd`) must be served back as `Content-Encoding`.
    fn upload(
        &self,
        bytes: Bytes,
        content_encoding: Option<&'static str>,
    ) -> BoxFuture<'_, Result<String, StorageError>>;

    /// `count` fresh upload/download URL pairs for the upload-URL flow.
    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>>;
}

/// A fresh object key: `{prefix}{32 random hex}.arrow`.
pub fn new_key(prefix: &str) -> String {
    format!("{prefix}{}.arrow", crate::http::random_hex(16))
}

/// Externalization as the transport uses it: a backend plus the thresholds,
/// compression and caps, and the fetcher for pointers that clients upload.
pub struct External {
    pub storage: std::sync::Arc<dyn ExternalStorage>,
    /// Set when the backend is `local`, whose objects this server serves.
    pub local: Option<std::sync::Arc<local::LocalStorage>>,
    pub threshold_bytes: u64,
    pub compression: Compression,
    pub max_externalized_response_bytes: Option<u64>,
    pub max_upload_bytes: Option<u64>,
    pub fetcher: fetch::Fetcher,
    /// References published once and reused (`Ctx::publish_cached`).
    pub published: PublishedCache,
}

/// The references [`External::publish_cached`] hands out again, each until
/// shortly before its URL expires.
///
/// One slot per key, each with its own lock: a first publication of a key
/// holds only that key's slot while it uploads, so other keys publish (and
/// hits are answered) meanwhile.
pub struct PublishedCache {
    /// How long an entry is handed out: the URL's lifetime less a margin
    /// the caller needs to fetch it.
    lifetime: std::time::Duration,
    slots: std::sync::Mutex<std::collections::HashMap<(String, bool), std::sync::Arc<Slot>>>,
}

type Slot = tokio::sync::Mutex<Option<(crate::rpc::ExternalRef, std::time::Instant)>>;

/// Slots kept before expired ones are dropped from the map.
const PUBLISHED_SLOTS_BEFORE_PRUNING: usize = 1024;

impl PublishedCache {
    /// A cache for URLs valid `url_ttl`: entries live `url_ttl` less a
    /// margin of half of it, at most five minutes, so a caller always has
    /// that long to fetch a reference it was given.
    pub fn new(url_ttl: std::time::Duration) -> PublishedCache {
        let margin = (url_ttl / 2).min(std::time::Duration::from_secs(300));
        PublishedCache {
            lifetime: url_ttl.saturating_sub(margin),
            slots: Default::default(),
        }
    }

    /// How long a published reference is handed out again.
    pub fn lifetime(&self) -> std::time::Duration {
        self.lifetime
    }

    fn slot(&self, key: &str, include_sha256: bool) -> std::sync::Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.len() >= PUBLISHED_SLOTS_BEFORE_PRUNING {
            let lifetime = self.lifetime;
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(entry) => entry
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() < lifetime),
                Err(_) => true,
            });
        }
        slots
            .entry((key.to_string(), include_sha256))
            .or_default()
            .clone()
    }
}

/// The pointer metadata of an uploaded object.
#[derive(Debug, Clone)]
pub struct Pointer {
    pub location: String,
    pub sha256: String,
    pub uploaded_bytes: u64,
}

impl External {
    /// Whether a batch this large moves to storage (it must have rows).
    pub fn should_externalize(&self, batch: &arrow_array::RecordBatch) -> bool {
        batch.num_rows() > 0 && batch.get_array_memory_size() as u64 >= self.threshold_bytes
    }

    /// Checks the cap on raw IPC bytes (as upstream measures it), hashes them,
    /// compresses, uploads.
    pub async fn externalize(&self, ipc: Vec<u8>) -> Result<Pointer, crate::wire::RpcError> {
        let raw_bytes = ipc.len() as u64;
        if let Some(cap) = self.max_externalized_response_bytes
            && raw_bytes > cap
        {
            return Err(crate::wire::RpcError::new(
                "ResponseTooLargeError",
                format!("Externalised payload exceeds max_externalized_response_bytes ({raw_bytes} > {cap})"),
            )
            .with_code(crate::wire::ErrorCode::ResourceExhausted));
        }
        let compression = self.compression;
        let (sha256, body) = tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            let sha256 = hex::encode(sha2::Sha256::digest(&ipc));
            let body = match compression {
                Compression::Off => ipc,
                Compression::Zstd(level) => zstd::bulk::compress(&ipc, level).unwrap_or(ipc),
                Compression::Gzip(level) => {
                    use std::io::Write;
                    let mut encoder =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                    encoder
                        .write_all(&ipc)
                        .and_then(|_| encoder.finish())
                        .unwrap_or(ipc)
                }
            };
            (sha256, body)
        })
        .await
        .map_err(|e| {
            crate::wire::RpcError::new("RuntimeError", format!("compression task failed: {e}"))
        })?;
        let uploaded_bytes = body.len() as u64;
        let location = self.storage.upload(Bytes::from(body), compression.content_encoding()).await.map_err(|error| {
            tracing::error!(backend = self.storage.name(), %error, "externalization upload failed");
            crate::wire::RpcError::new("ExternalStorageError", format!("failed to store a large batch in `{}` storage", self.storage.name()))
                .with_code(crate::wire::ErrorCode::Unavailable)
        })?;
        Ok(Pointer {
            location,
            sha256,
            uploaded_bytes,
        })
    }

    /// Uploads `batch` now, compressed as configured.
    pub async fn publish(
        &self,
        batch: arrow_array::RecordBatch,
        include_sha256: bool,
    ) -> Result<crate::rpc::ExternalRef, crate::wire::RpcError> {
        let ipc = crate::wire::ipc::stream_bytes(&batch.schema(), std::slice::from_ref(&batch))?;
        let pointer = self.externalize(ipc).await?;
        Ok(crate::rpc::ExternalRef {
            location: pointer.location,
            sha256: include_sha256.then_some(pointer.sha256),
        })
    }

    /// Publishes `batch` once per `(key, include_sha256)`, compressed as configured.
    pub async fn publish_cached(
        &self,
        key: &str,
        include_sha256: bool,
        batch: impl FnOnce() -> Result<arrow_array::RecordBatch, crate::wire::RpcError>,
    ) -> Result<crate::rpc::ExternalRef, crate::wire::RpcError> {
        let slot = self.published.slot(key, include_sha256);
        let mut entry = slot.lock().await;
        if let Some((found, at)) = entry.as_ref()
            && at.elapsed() < self.published.lifetime
        {
            return Ok(found.clone());
        }
        // Timed before the upload, so the entry ends before the URL does.
        let started = std::time::Instant::now();
        let batch = batch()?;
        let ipc = crate::wire::ipc::stream_bytes(&batch.schema(), std::slice::from_ref(&batch))?;
        let pointer = self.externalize(ipc).await?;
        let reference = crate::rpc::ExternalRef {
            location: pointer.location,
            sha256: include_sha256.then_some(pointer.sha256),
        };
        *entry = Some((reference.clone(), started));
        Ok(reference)
    }

    /// Metadata of a pointer batch.
    pub fn pointer_metadata(pointer: &Pointer) -> crate::wire::Metadata {
        vec![
            (
                crate::wire::LOCATION_KEY.to_string(),
                pointer.location.clone(),
            ),
            (
                crate::wire::LOCATION_SHA256_KEY.to_string(),
                pointer.sha256.clone(),
            ),
        ]
    }
}

/// Opens the configured backend. `service_url` is where clients reach this
/// service (`http://host:port{prefix}`), used by the `local` backend for its
/// object URLs when `KIT_PUBLIC_URL` is not set.
pub fn open(
    settings: &StorageSettings,
    fetch: settings::FetchSettings,
    keys: &crate::token::KeyRing,
    service_url: &str,
) -> Result<External, StorageError> {
    let mut fetch = fetch;
    let (storage, local): (std::sync::Arc<dyn ExternalStorage>, _) = match settings.provider {
        settings::Provider::Local => {
            let base = settings
                .public_url
                .clone()
                .unwrap_or_else(|| service_url.to_string());
            // Pointers to our own objects are trusted even on loopback.
            fetch.allowlist.push(base.clone());
            let dir = settings
                .dir
                .clone()
                .unwrap_or_else(|| "./.kit-storage".into());
            let local = std::sync::Arc::new(
                local::LocalStorage::new(
                    dir,
                    &base,
                    &settings.prefix,
                    settings.presign_ttl,
                    keys.clone(),
                    settings.max_upload_bytes,
                )?
                .with_upload_read_timeout(settings.upload_read_timeout)
                .with_expiry(settings.expiry),
            );
            // Opened outside a runtime (a one-off tool), there is nothing to
            // sweep for: the sweep belongs to a serving process.
            if tokio::runtime::Handle::try_current().is_ok() {
                local.spawn_sweeper(settings.sweep_interval);
            }
            (local.clone(), Some(local))
        }
        settings::Provider::Gcs => (
            std::sync::Arc::new(gcs::GcsStorage::from_env(
                settings,
                &crate::config::ProcessEnv,
            )?),
            None,
        ),
        settings::Provider::Azure => (
            std::sync::Arc::new(azure::AzureStorage::from_env(
                settings,
                &crate::config::ProcessEnv,
            )?),
            None,
        ),
        settings::Provider::Fake => (std::sync::Arc::new(fake::FakeStorage::new(settings)?), None),
        #[cfg(feature = "s3")]
        settings::Provider::S3 => (std::sync::Arc::new(s3::S3Storage::new(settings)?), None),
        #[cfg(not(feature = "s3"))]
        settings::Provider::S3 => {
            return Err(StorageError::Config(
                "`KIT_STORAGE=s3` is not available in this build of kit-service: rebuild with `--features s3`".into(),
            ));
        }
    };
    let fetcher = fetch::Fetcher::new(fetch).map_err(|e| StorageError::Config(e.to_string()))?;
    Ok(External {
        storage,
        local,
        threshold_bytes: settings.threshold_bytes,
        compression: settings.compression,
        max_externalized_response_bytes: settings.max_externalized_response_bytes,
        max_upload_bytes: settings.max_upload_bytes,
        fetcher,
        published: PublishedCache::new(settings.presign_ttl),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts uploads; each waits at `barrier` when one is set.
    struct Counting {
        uploads: AtomicUsize,
        barrier: Option<tokio::sync::Barrier>,
    }

    impl ExternalStorage for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }

        fn upload(
            &self,
            _bytes: Bytes,
            _content_encoding: Option<&'static str>,
        ) -> BoxFuture<'_, Result<String, StorageError>> {
            Box::pin(async move {
                if let Some(barrier) = &self.barrier {
                    barrier.wait().await;
                }
                let n = self.uploads.fetch_add(1, Ordering::SeqCst);
                Ok(format!("https://store.example/{n}"))
            })
        }

        fn upload_urls(
            &self,
            _count: usize,
        ) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn external(url_ttl: Duration, barrier: Option<usize>) -> (External, Arc<Counting>) {
        let storage = Arc::new(Counting {
            uploads: AtomicUsize::new(0),
            barrier: barrier.map(tokio::sync::Barrier::new),
        });
        let external = External {
            storage: storage.clone(),
            local: None,
            threshold_bytes: 1,
            compression: Compression::Off,
            max_externalized_response_bytes: None,
            max_upload_bytes: None,
            fetcher: fetch::Fetcher::new(settings::FetchSettings::default()).unwrap(),
            published: PublishedCache::new(url_ttl),
        };
        (external, storage)
    }

    fn batch() -> Result<arrow_array::RecordBatch, crate::wire::RpcError> {
        let column: arrow_array::ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![1]));
        Ok(arrow_array::RecordBatch::try_from_iter([("x", column)])?)
    }

    #[test]
    fn entries_end_before_their_urls_with_a_margin_to_fetch() {
        let check = |ttl: u64, lifetime_ms: u64| {
            assert_eq!(
                PublishedCache::new(Duration::from_secs(ttl)).lifetime(),
                Duration::from_millis(lifetime_ms),
                "URL TTL {ttl} s"
            );
        };
        check(3600, 3_300_000);
        check(600, 300_000);
        check(60, 30_000);
        check(1, 500);
    }

    #[tokio::test]
    async fn a_cached_reference_is_published_again_once_its_entry_expires() {
        let (external, storage) = external(Duration::from_millis(400), None);
        let first = external.publish_cached("k", false, batch).await.unwrap();
        let again = external.publish_cached("k", false, batch).await.unwrap();
        assert_eq!(first.location, again.location);
        assert_eq!(storage.uploads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let renewed = external.publish_cached("k", false, batch).await.unwrap();
        assert_ne!(
            renewed.location, first.location,
            "the URL would expire soon"
        );
        assert_eq!(storage.uploads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn uploads_of_different_keys_do_not_wait_for_each_other() {
        // Each upload waits until both are uploading: under one lock across
        // uploads, the second could never start and this would time out.
        let (external, storage) = external(Duration::from_secs(3600), Some(2));
        let both = async {
            tokio::join!(
                external.publish_cached("a", false, batch),
                external.publish_cached("b", true, batch),
            )
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("two keys publish concurrently");
        assert_ne!(a.unwrap().location, b.unwrap().location);
        assert_eq!(storage.uploads.load(Ordering::SeqCst), 2);
    }
}
