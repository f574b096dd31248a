//! The embedded default backend: objects on the local filesystem, served by
//! kit-service itself under `{prefix}/__objects__/{key}` with HMAC-signed,
//! expiring URLs and byte-range support, so externalization works with no
//! cloud at all.
//!
//! URLs are signed with a key derived from the stream-token key ring, so
//! every replica sharing the key (and the directory) accepts them, and a key
//! rotation keeps URLs minted under the previous key valid for their TTL.
//!
//! It behaves like a real object store where memory and disk are concerned:
//! uploads stream to a temporary file chunk by chunk (never held whole, with
//! an idle read timeout and a size cap even when `KIT_MAX_UPLOAD_BYTES` is
//! unset), downloads and ranges seek and stream from the file, and objects
//! older than `KIT_STORAGE_EXPIRY_DAYS` are deleted by a background sweep, as
//! a bucket lifecycle rule would.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};

use super::{ExternalStorage, StorageError, UploadUrl, new_key};
use crate::rpc::BoxFuture;
use crate::token::KeyRing;

/// Route segment under the vgi-rpc prefix where objects are served.
pub const OBJECTS_SEGMENT: &str = "__objects__";
const SIGNING_LABEL: &str = "kit-local-storage";
/// The cap on one upload when `KIT_MAX_UPLOAD_BYTES` is unset: S3's limit
/// for a single PUT.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 5 << 30;
/// Most objects one expiry sweep deletes; the next sweep goes on from there.
pub const MAX_SWEEP_DELETIONS: usize = 10_000;
/// Bytes read from disk per body chunk when serving an object.
const READ_CHUNK: usize = 64 * 1024;

pub struct LocalStorage {
    dir: PathBuf,
    /// `http://host:port{prefix}`: where clients reach this service.
    base_url: String,
    prefix: String,
    ttl: Duration,
    keys: KeyRing,
    max_upload_bytes: Option<u64>,
    upload_read_timeout: Duration,
    expiry: Option<Duration>,
}

/// What one expiry sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Objects (and leftover temporary files) deleted.
    pub deleted: usize,
    /// Objects younger than the expiry, left in place.
    pub kept: usize,
    /// True when the sweep stopped at [`MAX_SWEEP_DELETIONS`].
    pub truncated: bool,
}

impl LocalStorage {
    /// A store in `dir` (created if missing) whose URLs start at `base_url`.
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
            upload_read_timeout: Duration::from_secs(30),
            expiry: None,
        })
    }

    /// An upload that sends nothing for `timeout` is answered 408.
    pub fn with_upload_read_timeout(mut self, timeout: Duration) -> Self {
        self.upload_read_timeout = timeout;
        self
    }

    /// Objects older than `expiry` are deleted by [`LocalStorage::sweep`].
    pub fn with_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.expiry = expiry;
        self
    }

    /// Deletes objects (with their `.meta`) and leftover temporary files
    /// whose modification time is older than the expiry, at most
    /// [`MAX_SWEEP_DELETIONS`] per call. Blocking: run it off the async workers.
    pub fn sweep(&self, now: SystemTime) -> Sweep {
        let mut sweep = Sweep::default();
        let Some(expiry) = self.expiry else {
            return sweep;
        };
        let Some(cutoff) = now.checked_sub(expiry) else {
            return sweep;
        };
        let mut pending = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                if metadata.is_dir() {
                    pending.push(path);
                    continue;
                }
                if path.extension().is_some_and(|e| e == "meta") {
                    // Deleted with its object; an orphan goes when it is old.
                    if path.with_extension("").exists() {
                        continue;
                    }
                }
                let expired = metadata.modified().is_ok_and(|modified| modified < cutoff);
                if !expired {
                    sweep.kept += 1;
                    continue;
                }
                if sweep.deleted == MAX_SWEEP_DELETIONS {
                    sweep.truncated = true;
                    return sweep;
                }
                if std::fs::remove_file(&path).is_ok() {
                    let _ = std::fs::remove_file(meta_path(&path));
                    sweep.deleted += 1;
                }
            }
        }
        sweep
    }

    /// Runs [`LocalStorage::sweep`] every `interval` on the blocking pool
    /// until the store is dropped. Needs a tokio runtime.
    pub fn spawn_sweeper(self: &std::sync::Arc<Self>, interval: Duration) {
        if self.expiry.is_none() {
            return;
        }
        let store = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(store) = store.upgrade() else {
                    return;
                };
                let swept =
                    tokio::task::spawn_blocking(move || store.sweep(SystemTime::now())).await;
                match swept {
                    Ok(sweep) if sweep.deleted > 0 => {
                        tracing::info!(
                            deleted = sweep.deleted,
                            kept = sweep.kept,
                            truncated = sweep.truncated,
                            "expired objects deleted from local storage"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "local storage sweep failed"),
                }
            }
        });
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

    /// Streams the body to a temporary file, then renames it into place.
    async fn put(&self, path: &Path, headers: &HeaderMap, body: Body) -> Response {
        let limit = self.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload exceeds max upload bytes",
            );
        }
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let temp = temp_path(path);
        let written = receive(body, &temp, limit, self.upload_read_timeout).await;
        let stored = match written {
            Ok(()) => publish_object(&temp, path, encoding.as_deref()).await,
            Err(Upload::Io(error)) => Err(error),
            Err(refused) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return match refused {
                    Upload::TooLarge => plain(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "upload exceeds max upload bytes",
                    ),
                    Upload::TimedOut => plain(
                        StatusCode::REQUEST_TIMEOUT,
                        "upload sent nothing within the read timeout",
                    ),
                    _ => plain(StatusCode::BAD_REQUEST, "upload body ended early"),
                };
            }
        };
        match stored {
            Ok(()) => plain(StatusCode::NO_CONTENT, ""),
            Err(error) => {
                let _ = tokio::fs::remove_file(&temp).await;
                tracing::error!(path = %path.display(), %error, "failed to store an uploaded object");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed to store the object",
                )
            }
        }
    }
}

/// Why an upload did not reach its temporary file whole.
#[derive(Debug)]
enum Upload {
    TooLarge,
    TimedOut,
    Broken,
    Io(std::io::Error),
}

/// Writes `body` to `temp` as it arrives: at most `limit` bytes, and no more
/// than `idle` between two chunks.
async fn receive(body: Body, temp: &Path, limit: u64, idle: Duration) -> Result<(), Upload> {
    if let Some(parent) = temp.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(Upload::Io)?;
    }
    let mut file = tokio::fs::File::create(temp).await.map_err(Upload::Io)?;
    let mut body = body;
    let mut received = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(Upload::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Upload::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if received > limit {
            return Err(Upload::TooLarge);
        }
        file.write_all(&data).await.map_err(Upload::Io)?;
    }
    file.flush().await.map_err(Upload::Io)?;
    Ok(())
}

fn signed_text(operation: &str, key: &str, expires: u64) -> String {
    format!("{operation}\n{key}\n{expires}")
}

fn meta_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

fn temp_path(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp-{}", crate::http::random_hex(4)))
}

/// Writes atomically (temp file, then rename) so readers never see half an object.
async fn write_object(path: &Path, bytes: Bytes, encoding: Option<&str>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let temp = temp_path(path);
    tokio::fs::write(&temp, &bytes).await?;
    publish_object(&temp, path, encoding).await
}

/// Records the object's encoding, then moves the finished `temp` into place.
async fn publish_object(temp: &Path, path: &Path, encoding: Option<&str>) -> std::io::Result<()> {
    let meta = serde_json::json!({ "content_encoding": encoding }).to_string();
    tokio::fs::write(meta_path(path), meta).await?;
    tokio::fs::rename(temp, path).await
}

async fn get(path: &Path, headers: &HeaderMap, head_only: bool) -> Response {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return plain(StatusCode::NOT_FOUND, "no such object");
    };
    let Ok(total) = file.metadata().await.map(|m| m.len()) else {
        return plain(StatusCode::NOT_FOUND, "no such object");
    };
    let encoding = tokio::fs::read_to_string(meta_path(path))
        .await
        .ok()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| m["content_encoding"].as_str().map(str::to_string));
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
    let length = if total == 0 { 0 } else { end - start + 1 };
    let body = if head_only || length == 0 {
        Body::empty()
    } else {
        if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to read the object",
            );
        }
        Body::new(FileBody {
            file,
            remaining: length,
            buffer: vec![0u8; READ_CHUNK.min(length as usize)],
        })
    };
    let mut response = Response::new(body);
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

/// `remaining` bytes of an open file from its current position, read
/// [`READ_CHUNK`] at a time as hyper polls: a range costs one chunk of memory
/// per connection, whatever the object's size.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buffer: Vec<u8>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = (this.remaining as usize).min(this.buffer.len());
        let mut read = ReadBuf::new(&mut this.buffer[..want]);
        match Pin::new(&mut this.file).poll_read(context, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "object shorter than when the response started",
                ))))
            }
            Poll::Ready(Ok(())) => {
                let chunk = Bytes::copy_from_slice(read.filled());
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
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

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("kit-local-{}", crate::http::random_hex(4)))
    }

    /// `count` chunks of `size` bytes, then the end, or a stall when `stall`.
    struct TestBody {
        count: usize,
        size: usize,
        stall: bool,
    }

    impl http_body::Body for TestBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _context: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            let this = self.get_mut();
            if this.count == 0 {
                return if this.stall {
                    Poll::Pending
                } else {
                    Poll::Ready(None)
                };
            }
            this.count -= 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
                7u8;
                this.size
            ])))))
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    pending.push(entry.path());
                } else {
                    found.push(entry.path());
                }
            }
        }
        found
    }

    async fn put_url(local: &LocalStorage) -> (String, String) {
        let url = local.upload_urls(1).await.unwrap().remove(0).upload_url;
        let (path, query) = url.split_once('?').unwrap();
        let key = path.split_once("/__objects__/").unwrap().1;
        (key.to_string(), query.to_string())
    }

    #[tokio::test]
    async fn uploads_stream_to_disk_and_stop_at_the_cap() {
        let dir = scratch();
        let local = storage(&dir, KeyRing::ephemeral(60));
        let (key, query) = put_url(&local).await;
        let no_headers = HeaderMap::new();
        let put = |count, stall| {
            local.serve(
                &Method::PUT,
                &key,
                &query,
                &no_headers,
                Body::new(TestBody {
                    count,
                    size: 256,
                    stall,
                }),
            )
        };
        // 4 x 256 = the 1024-byte cap: accepted.
        assert_eq!(put(4, false).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(std::fs::read(dir.join(&key)).unwrap().len(), 1024);
        // One chunk more: refused, and nothing half-written is left behind.
        assert_eq!(put(5, false).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(std::fs::read(dir.join(&key)).unwrap().len(), 1024);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(2048));
        let declared = local
            .serve(&Method::PUT, &key, &query, &headers, Body::empty())
            .await;
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(files_under(&dir).len(), 2, "the object and its .meta");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_stalled_upload_times_out_and_leaves_nothing() {
        let dir = scratch();
        let local = storage(&dir, KeyRing::ephemeral(60))
            .with_upload_read_timeout(Duration::from_millis(200));
        let (key, query) = put_url(&local).await;
        let body = Body::new(TestBody {
            count: 1,
            size: 100,
            stall: true,
        });
        let started = std::time::Instant::now();
        let response = local
            .serve(&Method::PUT, &key, &query, &HeaderMap::new(), body)
            .await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(files_under(&dir).is_empty(), "{:?}", files_under(&dir));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn ranges_are_read_from_their_offset() {
        let dir = scratch();
        let local = storage(&dir, KeyRing::ephemeral(60));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let url = local.upload(Bytes::from(data.clone()), None).await.unwrap();
        let (path, query) = url.split_once('?').unwrap();
        let key = path.split_once("/__objects__/").unwrap().1;
        for (range, expect) in [
            (None, &data[..]),
            (Some("bytes=70000-150000"), &data[70_000..=150_000]),
            (Some("bytes=-10"), &data[199_990..]),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(range) = range {
                headers.insert(header::RANGE, HeaderValue::from_static(range));
            }
            let response = local
                .serve(&Method::GET, key, query, &headers, Body::empty())
                .await;
            assert_eq!(
                response.headers()[header::CONTENT_LENGTH],
                expect.len().to_string()
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], expect, "{range:?}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn objects_past_their_expiry_are_swept_with_their_metadata() {
        let dir = scratch();
        let day = Duration::from_secs(24 * 3600);
        let local = storage(&dir, KeyRing::ephemeral(60)).with_expiry(Some(day));
        let old = local
            .upload(Bytes::from_static(b"old"), None)
            .await
            .unwrap();
        let fresh = local
            .upload(Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        let path_of = |url: &str| -> PathBuf {
            let key = url.split_once("/__objects__/").unwrap().1;
            let key = key.split_once('?').unwrap().0;
            dir.join(key)
        };
        let (old, fresh) = (path_of(&old), path_of(&fresh));
        let two_days_ago = SystemTime::now() - 2 * day;
        for path in [&old, &meta_path(&old)] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
        }
        let sweep = local.sweep(SystemTime::now());
        assert_eq!((sweep.deleted, sweep.truncated), (1, false), "{sweep:?}");
        assert!(!old.exists() && !meta_path(&old).exists());
        assert!(fresh.exists() && meta_path(&fresh).exists());
        // Without an expiry nothing is ever deleted.
        let keep = storage(&dir, KeyRing::ephemeral(60));
        assert_eq!(keep.sweep(SystemTime::now() + 100 * day), Sweep::default());
        std::fs::remove_dir_all(dir).ok();
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
