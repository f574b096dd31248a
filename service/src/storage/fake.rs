//! The vgi-rpc conformance suite's fake object store as a backend.
//!
//! The wheel ships `vgi_rpc.conformance.fake_storage`, an in-memory HTTP
//! store whose contract every port's conformance worker is meant to speak:
//! `POST {endpoint}/alloc` returns a method-bound `upload_url` (PUT only) and
//! `download_url` (GET and HEAD), and `PUT upload_url` stores the bytes with
//! their `Content-Encoding`. Several suite groups count the objects in that
//! store, so a worker that externalizes anywhere else cannot pass them. This
//! backend exists for those runs (`KIT_STORAGE=fake`, `KIT_STORAGE_ENDPOINT`
//! naming the store); it has no credentials and no lifecycle, so it is no
//! place for real data.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::signing::{refused, unreachable};
use super::{ExternalStorage, StorageError, StorageSettings, UploadUrl};
use crate::rpc::BoxFuture;

const BACKEND: &str = "fake";

/// A client of one fake-storage service.
pub struct FakeStorage {
    endpoint: String,
    client: reqwest::Client,
    ttl: Duration,
}

#[derive(serde::Deserialize)]
struct Allocation {
    upload_url: String,
    download_url: String,
}

impl FakeStorage {
    /// A backend for the store at `KIT_STORAGE_ENDPOINT`.
    pub fn new(settings: &StorageSettings) -> Result<FakeStorage, StorageError> {
        let endpoint = settings.endpoint.clone().ok_or_else(|| {
            StorageError::Config(
                "`KIT_STORAGE=fake` needs `KIT_STORAGE_ENDPOINT` (the fake-storage service's base URL)"
                    .into(),
            )
        })?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| unreachable(BACKEND, e))?;
        Ok(FakeStorage {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            client,
            ttl: settings.presign_ttl,
        })
    }

    async fn allocate(&self, content_encoding: Option<&str>) -> Result<Allocation, StorageError> {
        let body = match content_encoding {
            Some(encoding) => serde_json::json!({ "content_encoding": encoding }),
            None => serde_json::json!({}),
        };
        let response = self
            .client
            .post(format!("{}/alloc", self.endpoint))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| unreachable(BACKEND, e))?;
        if !response.status().is_success() {
            return Err(refused(BACKEND, "alloc", response).await);
        }
        let text = response
            .bytes()
            .await
            .map_err(|e| unreachable(BACKEND, e))?;
        serde_json::from_slice::<Allocation>(&text).map_err(|e| StorageError::Failed {
            backend: BACKEND,
            message: format!("`/alloc` answered something other than its JSON: {e}"),
        })
    }
}

impl ExternalStorage for FakeStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn upload(
        &self,
        bytes: Bytes,
        content_encoding: Option<&'static str>,
    ) -> BoxFuture<'_, Result<String, StorageError>> {
        Box::pin(async move {
            let allocation = self.allocate(content_encoding).await?;
            let mut request = self.client.put(&allocation.upload_url).body(bytes);
            if let Some(encoding) = content_encoding {
                request = request.header(reqwest::header::CONTENT_ENCODING, encoding);
            }
            let response = request.send().await.map_err(|e| unreachable(BACKEND, e))?;
            if !response.status().is_success() {
                return Err(refused(BACKEND, "upload", response).await);
            }
            Ok(allocation.download_url)
        })
    }

    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
        Box::pin(async move {
            let mut urls = Vec::with_capacity(count);
            for _ in 0..count {
                let allocation = self.allocate(None).await?;
                urls.push(UploadUrl {
                    upload_url: allocation.upload_url,
                    download_url: allocation.download_url,
                    expires_at: SystemTime::now() + self.ttl,
                });
            }
            Ok(urls)
        })
    }
}
