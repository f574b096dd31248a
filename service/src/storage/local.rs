//! The embedded default backend: objects on the local filesystem, served by
//! kit-service itself under `{prefix}/__objects__/{key}` with HMAC-signed,
//! expiring URLs and byte-range support, so externalization works with no
//! cloud at all.
//!
//! URLs are signed with a key derived from the stream-token key ring, so
//! every replica sharing the key (and the directory) accepts them, and a key
//! rotation keeps URLs minted under the previous key valid for their TTL.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::{ExternalStorage, StorageError, UploadUrl, new_key};
use crate::rpc::BoxFuture;
use crate::token::KeyRing;

/// Route segment under the vgi-rpc prefix where objects are served.
pub const OBJECTS_SEGMENT: &str = "__objects__";
const SIGNING_LABEL: &str = "kit-local-storage";

pub struct LocalStorage {
    dir: PathBuf,
    /// `http://host:port{prefix}`: where clients reach this service.
    base_url: String,
    prefix: String,
    ttl: Duration,
    keys: KeyRing,
    max_upload_bytes: Option<u64>,
}

impl LocalStorage {
    pub fn new(
        dir: impl Into<PathBuf>,
        base_url: &str,
        prefix: &str,
        ttl: Duration,
        keys: KeyRing,
        max_upload_bytes: Option<u64>,
    ) -> Result<Self, StorageError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            StorageError::Config(format!("failed to create `{}`: {e}", dir.display()))
        })?;
        Ok(LocalStorage {
            dir,
            base_url: base_url.trim_end_matches('/').to_string(),
            prefix: prefix.to_string(),
            ttl,
            keys,
            max_upload_bytes,
        })
    }

    fn url(&self, key: &str, operation: &str) -> (String, SystemTime) {
        let expires_at = SystemTime::now() + self.ttl;
        let expires = expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = hex::encode(
            self.keys
                .primary()
                .derive(SIGNING_LABEL, &signed_text(operation, key, expires)),
        );
        (
            format!(
                "{}/{OBJECTS_SEGMENT}/{key}?expires={expires}&sig={signature}",
                self.base_url
            ),
            expires_at,
        )
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        // Keys are ours: prefix plus hex. Anything else (`..`, absolute paths) is refused.
        let valid = key.starts_with(&self.prefix)
            && !key.contains("..")
            && !key.starts_with('/')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
        valid.then(|| self.dir.join(key))
    }

    /// Checks a URL's signature and expiry for `operation` against every key in the ring.
    fn authorized(&self, operation: &str, key: &str, query: &str) -> Result<(), &'static str> {
        let mut expires = None;
        let mut signature = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse::<u64>().ok(),
                Some(("sig", v)) => signature = hex::decode(v).ok(),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err("missing or malformed signature");
        };
        let text = signed_text(operation, key, expires);
        let valid = std::iter::once(self.keys.primary())
            .chain(self.keys.previous())
            .any(|k| {
                subtle::ConstantTimeEq::ct_eq(
                    k.derive(SIGNING_LABEL, &text).as_slice(),
                    signature.as_slice(),
                )
                .into()
            });
        if !valid {
            return Err("signature does not match");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        if expires < now {
            return Err("URL expired");
        }
        Ok(())
    }

    /// Serves GET/HEAD (with ranges) and PUT of `key` (the path after `__objects__/`).
    pub async fn serve(
        &self,
        method: &Method,
        key: &str,
        query: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let operation = if *method == Method::PUT { "PUT" } else { "GET" };
        let Some(path) = self.path(key) else {
            return plain(StatusCode::NOT_FOUND, "no such object");
        };
        if let Err(reason) = self.authorized(operation, key, query) {
            return plain(StatusCode::FORBIDDEN, reason);
        }
        match *method {
            Method::PUT => self.put(&path, headers, body).await,
            Method::GET | Method::HEAD => get(&path, headers, *method == Method::HEAD).await,
            _ => plain(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or PUT"),
        }
    }

    async fn put(&self, path: &Path, headers: &HeaderMap, body: Body) -> Response {
        let limit = self
            .max_upload_bytes
            .unwrap_or(u64::MAX)
            .min(usize::MAX as u64) as usize;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload exceeds max upload bytes",
            );
        };
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match write_object(path, bytes, encoding.as_deref()).await {
            Ok(()) => plain(StatusCode::NO_CONTENT, ""),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "failed to store an uploaded object");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed to store the object",
                )
            }
        }
    }
}

fn signed_text(operation: &str, key: &str, expires: u64) -> String {
    format!("{operation}\n{key}\n{expires}")
}

fn meta_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

/// Writes atomically (temp file, then rename) so readers never see half an object.
async fn write_object(path: &Path, bytes: Bytes, encoding: Option<&str>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let temp = path.with_extension(format!("tmp-{}", crate::http::random_hex(4)));
    tokio::fs::write(&temp, &bytes).await?;
    let meta = serde_json::json!({ "content_encoding": encoding }).to_string();
    tokio::fs::write(meta_path(path), meta).await?;
    tokio::fs::rename(&temp, path).await
}

async fn get(path: &Path, headers: &HeaderMap, head_only: bool) -> Response {
    let Ok(data) = tokio::fs::read(path).await else {
        return plain(StatusCode::NOT_FOUND, "no such object");
    };
    let encoding = tokio::fs::read_to_string(meta_path(path))
        .await
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| m["content_encoding"].as_str().map(str::to_string));
    let total = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, total));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, total.saturating_sub(1)),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "");
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"),
            );
            return response;
        }
    };
    let slice = if total == 0 {
        Bytes::new()
    } else {
        Bytes::from(data).slice(start as usize..=end as usize)
    };
    let length = slice.len();
    let mut response = Response::new(if head_only {
        Body::empty()
    } else {
        Body::from(slice)
    });
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::wire::CONTENT_TYPE),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT {
        out.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")).expect("ascii"),
        );
    }
    if let Some(encoding) = encoding.and_then(|e| HeaderValue::from_str(&e).ok()) {
        out.insert(header::CONTENT_ENCODING, encoding);
    }
    response
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range); `None` when unsatisfiable.
fn parse_range(text: &str, total: u64) -> Option<(u64, u64)> {
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (total.saturating_sub(n), total - 1)
        }
        (start, "") => (start.parse().ok()?, total - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(total - 1)),
    };
    (start <= end && start < total).then_some((start, end))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

impl ExternalStorage for LocalStorage {
    fn name(&self) -> &'static str {
        "local"
    }

    fn upload(
        &self,
        bytes: Bytes,
        content_encoding: Option<&'static str>,
    ) -> BoxFuture<'_, Result<String, StorageError>> {
        Box::pin(async move {
            let key = new_key(&self.prefix);
            let path = self
                .path(&key)
                .ok_or_else(|| StorageError::Config(format!("invalid object key `{key}`")))?;
            write_object(&path, bytes, content_encoding)
                .await
                .map_err(|e| StorageError::Failed {
                    backend: "local",
                    message: format!("writing `{}`: {e}", path.display()),
                })?;
            Ok(self.url(&key, "GET").0)
        })
    }

    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
        Box::pin(async move {
            Ok((0..count)
                .map(|_| {
                    let key = new_key(&self.prefix);
                    let (upload_url, expires_at) = self.url(&key, "PUT");
                    let (download_url, _) = self.url(&key, "GET");
                    UploadUrl {
                        upload_url,
                        download_url,
                        expires_at,
                    }
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SigningKey;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 0)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-11", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
    }

    fn storage(dir: &Path, keys: KeyRing) -> LocalStorage {
        LocalStorage::new(
            dir,
            "http://127.0.0.1:1",
            "vgi-rpc/",
            Duration::from_secs(60),
            keys,
            Some(1024),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn signed_urls_verify_and_tampering_fails() {
        let dir = std::env::temp_dir().join(format!("kit-local-{}", crate::http::random_hex(4)));
        let keys = KeyRing::new(SigningKey::new(vec![5; 32]), vec![], 60);
        let local = storage(&dir, keys);
        let url = local
            .upload(Bytes::from_static(b"hello"), None)
            .await
            .unwrap();
        let (path, query) = url.split_once('?').unwrap();
        let key = path.split_once("/__objects__/").unwrap().1;
        let response = local
            .serve(&Method::GET, key, query, &HeaderMap::new(), Body::empty())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let response = local
            .serve(&Method::PUT, key, query, &HeaderMap::new(), Body::from("x"))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "a GET signature does not authorize PUT"
        );
        let tampered = query.replace("expires=", "expires=1");
        assert_eq!(
            local
                .serve(
                    &Method::GET,
                    key,
                    &tampered,
                    &HeaderMap::new(),
                    Body::empty()
                )
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            local
                .serve(
                    &Method::GET,
                    "../etc/passwd",
                    query,
                    &HeaderMap::new(),
                    Body::empty()
                )
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        // After a rotation the old URL still verifies through the previous key.
        let rotated = storage(
            &dir,
            KeyRing::new(
                SigningKey::new(vec![6; 32]),
                vec![SigningKey::new(vec![5; 32])],
                60,
            ),
        );
        assert_eq!(
            rotated
                .serve(&Method::GET, key, query, &HeaderMap::new(), Body::empty())
                .await
                .status(),
            StatusCode::OK
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
