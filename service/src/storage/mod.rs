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
    pub published:
        tokio::sync::Mutex<std::collections::HashMap<(String, bool), crate::rpc::ExternalRef>>,
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
        let mut published = self.published.lock().await;
        if let Some(found) = published.get(&(key.to_string(), include_sha256)) {
            return Ok(found.clone());
        }
        let batch = batch()?;
        let ipc = crate::wire::ipc::stream_bytes(&batch.schema(), std::slice::from_ref(&batch))?;
        let pointer = self.externalize(ipc).await?;
        let reference = crate::rpc::ExternalRef {
            location: pointer.location,
            sha256: include_sha256.then_some(pointer.sha256),
        };
        published.insert((key.to_string(), include_sha256), reference.clone());
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
            let local = std::sync::Arc::new(local::LocalStorage::new(
                dir,
                &base,
                &settings.prefix,
                settings.presign_ttl,
                keys.clone(),
                settings.max_upload_bytes,
            )?);
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
        published: Default::default(),
    })
}
