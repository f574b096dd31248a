//! Fetching externalized batches: what the server does with an uploaded
//! request pointer, and what a Rust client does with a result pointer.
//!
//! Mirrors vgi-rpc's `external_fetch.fetch_url`: probe (HEAD, or a one-byte
//! Range GET for pre-signed URLs whose signature is bound to GET), then one GET
//! below the parallel threshold, or parallel Range GETs in chunks above it with
//! speculative hedging of slow chunks. Every fetch is bounded: overall timeout,
//! encoded and decoded byte caps, bounded retries. The sha256 in the pointer,
//! when present, is checked over the decoded bytes.
//!
//! Safety: pointer URLs come from the network, so they are validated before
//! any connection, and so is every redirect target. Only https is allowed, and
//! no loopback, private, link-local or unspecified address, by URL literal or
//! by DNS answer (the resolver itself filters, so a rebinding answer after
//! validation cannot slip through) — unless the URL's scheme, host and port
//! match an entry of the allowlist. The allowlist is compared on the parsed
//! URL, never as a string prefix, and a URL carrying userinfo
//! (`http://a:b@host/`) is refused outright: it has no place in a pointer and
//! is the classic way to make a prefix match lie about the host.
//!
//! Pointer fetches never use the process's `HTTP(S)_PROXY`/`ALL_PROXY`: a
//! proxy resolves names itself, so the resolver's address check would never
//! run. A proxy is used only when configured for fetches
//! (`KIT_FETCH_PROXY`), and then each host is resolved and checked here
//! before the proxy sees the URL.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE,
};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::settings::FetchSettings;
use crate::http::codec::{self, Codec};
use crate::limits::Reservation;

/// A URL as errors, logs and metrics may show it: scheme, host, port and path.
///
/// Pre-signed URLs carry their credentials in the query string
/// (`X-Amz-Signature`, `X-Goog-Signature`, a SAS `sig`), and userinfo and
/// fragments can carry them too, so all three are dropped, as vgi-rpc's
/// `redact_url` does. Every URL a [`FetchError`] names is one of these, so an
/// error cannot hand a signature back to a caller or into a log.
///
/// ```
/// use kit_service::storage::fetch::RedactedUrl;
/// let url = "https://user:pw@bucket.example:8443/key.arrow?X-Amz-Signature=secret#frag";
/// assert_eq!(RedactedUrl::new(url).as_str(), "https://bucket.example:8443/key.arrow");
/// assert_eq!(RedactedUrl::new("not a url").as_str(), "<invalid-url>");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `url`; text that is not an absolute URL becomes `<invalid-url>`.
    pub fn new(url: &str) -> RedactedUrl {
        match Url::parse(url) {
            Ok(parsed) => RedactedUrl::from(&parsed),
            Err(_) => RedactedUrl("<invalid-url>".to_string()),
        }
    }

    /// The redacted text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Url> for RedactedUrl {
    fn from(url: &Url) -> RedactedUrl {
        let Some(host) = url.host_str() else {
            return RedactedUrl("<invalid-url>".to_string());
        };
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        RedactedUrl(format!("{}://{host}{port}{}", url.scheme(), url.path()))
    }
}

impl std::fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a pointer could not be fetched. The texts keep the phrases vgi-rpc's
/// own fetcher uses (`URL rejected`, `redirect limit`, `max_fetch_bytes`,
/// `max_decompressed_bytes`, `checksum`), which the conformance suite and
/// clients match on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("ExternalLocation URL rejected: `{url}`: {reason}")]
    Refused { url: RedactedUrl, reason: String },
    #[error("ExternalLocation redirect limit exceeded (max_redirects={max}) at `{url}`")]
    RedirectLimit { url: RedactedUrl, max: usize },
    #[error("ExternalLocation fetch of `{url}` failed: {message}")]
    Transport { url: RedactedUrl, message: String },
    #[error("ExternalLocation fetch of `{url}` returned HTTP {status}")]
    Status { url: RedactedUrl, status: u16 },
    #[error(
        "ExternalLocation fetch rejected: `{url}` is {size} bytes, above max_fetch_bytes ({limit})"
    )]
    TooLarge {
        url: RedactedUrl,
        size: u64,
        limit: u64,
    },
    #[error("ExternalLocation decoded body exceeded max_decompressed_bytes ({limit}) from `{url}`")]
    DecodedTooLarge { url: RedactedUrl, limit: u64 },
    #[error("ExternalLocation body from `{url}` could not be decoded: {message}")]
    Decode { url: RedactedUrl, message: String },
    #[error("SHA-256 checksum mismatch for `{url}`: expected {expected}, got {actual}")]
    Checksum {
        url: RedactedUrl,
        expected: String,
        actual: String,
    },
    #[error("fetching `{url}` did not finish within {seconds} s")]
    Timeout { url: RedactedUrl, seconds: u64 },
    #[error("invalid fetch setting `{name}`: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("fetching `{url}` would pass the server's in-flight memory budget")]
    OverBudget { url: RedactedUrl },
}

impl FetchError {
    /// Transport problems are worth a retry; policy and integrity failures are not.
    fn retryable(&self) -> bool {
        match self {
            FetchError::Transport { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub requests: AtomicUsize,
    pub hedges: AtomicUsize,
    pub retries: AtomicUsize,
}

/// A bounded, validated HTTP fetcher for pointer URLs.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: Arc<FetchSettings>,
    allowlist: Arc<[AllowedOrigin]>,
    stats: Arc<FetchStats>,
}

/// What the probe learned.
#[derive(Debug, Clone)]
struct Probe {
    url: Url,
    length: Option<u64>,
    ranges: bool,
}

impl Fetcher {
    /// A fetcher with `settings`; fails on an allowlist entry or proxy URL
    /// that does not parse (the config parser reports those first).
    pub fn new(settings: FetchSettings) -> Result<Fetcher, FetchError> {
        let allowlist: Arc<[AllowedOrigin]> = settings
            .allowlist
            .iter()
            .map(|entry| AllowedOrigin::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| FetchError::Setting {
                name: "KIT_URL_ALLOWLIST",
                reason,
            })?
            .into();
        let resolver = SafeResolver {
            allowlist: allowlist.clone(),
        };
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            // Content-Encoding is decoded here, under our limits, not by the client.
            .no_gzip()
            // The environment's proxy would resolve names past the resolver's check.
            .no_proxy()
            .connect_timeout(Duration::from_secs(10));
        let builder = match &settings.proxy {
            None => builder,
            Some(proxy) => {
                let proxy = parse_proxy(proxy).map_err(|reason| FetchError::Setting {
                    name: "KIT_FETCH_PROXY",
                    reason,
                })?;
                builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| FetchError::Setting {
                    name: "KIT_FETCH_PROXY",
                    reason: e.to_string(),
                })?)
            }
        };
        let client = builder.build().map_err(|e| FetchError::Transport {
            url: RedactedUrl("<none>".to_string()),
            message: e.to_string(),
        })?;
        Ok(Fetcher {
            client,
            settings: Arc::new(settings),
            allowlist,
            stats: Arc::new(FetchStats::default()),
        })
    }

    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Fetches `url`, decodes its content encoding, and checks `sha256` (hex) when given.
    pub async fn fetch(&self, url: &str, sha256: Option<&str>) -> Result<Bytes, FetchError> {
        self.fetch_within(url, sha256, &mut Reservation::untracked())
            .await
    }

    /// [`Fetcher::fetch`] holding every downloaded and decoded byte in
    /// `reservation` before keeping it; [`FetchError::OverBudget`] when the
    /// budget behind it is spent.
    pub async fn fetch_within(
        &self,
        url: &str,
        sha256: Option<&str>,
        reservation: &mut Reservation,
    ) -> Result<Bytes, FetchError> {
        let deadline = self.settings.timeout;
        let attempt = self.fetch_with_retries(url, sha256, reservation);
        match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                url: RedactedUrl::new(url),
                seconds: deadline.as_secs(),
            }),
        }
    }

    async fn fetch_with_retries(
        &self,
        url: &str,
        sha256: Option<&str>,
        reservation: &mut Reservation,
    ) -> Result<Bytes, FetchError> {
        let attempts = self.settings.max_retries.min(2) + 1;
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.settings.retry_delay).await;
            }
            match self.fetch_once(url, sha256, reservation).await {
                Ok(bytes) => return Ok(bytes),
                Err(error) if error.retryable() => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.expect("at least one attempt ran"))
    }

    async fn fetch_once(
        &self,
        url: &str,
        sha256: Option<&str>,
        reservation: &mut Reservation,
    ) -> Result<Bytes, FetchError> {
        let url = self.validate(url)?;
        let probe = self.probe(url).await?;
        if let Some(length) = probe.length
            && length > self.settings.max_fetch_bytes
        {
            return Err(FetchError::TooLarge {
                url: RedactedUrl::from(&probe.url),
                size: length,
                limit: self.settings.max_fetch_bytes,
            });
        }
        let (body, encoding) = match probe.length {
            Some(length) if probe.ranges && length >= self.settings.parallel_threshold_bytes => {
                if !reservation.grow_to(length) {
                    return Err(FetchError::OverBudget {
                        url: RedactedUrl::from(&probe.url),
                    });
                }
                self.parallel_get(&probe.url, length).await?
            }
            _ => self.single_get(&probe.url, reservation).await?,
        };
        let decoded = self
            .decode(&probe.url, body, encoding.as_deref(), reservation)
            .await?;
        if let Some(expected) = sha256 {
            let actual = hex::encode(Sha256::digest(&decoded));
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(FetchError::Checksum {
                    url: RedactedUrl::from(&probe.url),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(decoded)
    }

    /// Applies the URL policy; returns the parsed URL.
    pub fn validate(&self, url: &str) -> Result<Url, FetchError> {
        let refused = |reason: &str| FetchError::Refused {
            url: RedactedUrl::new(url),
            reason: reason.to_string(),
        };
        let parsed = Url::parse(url).map_err(|e| refused(&format!("not a URL ({e})")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refused(
                "URLs with userinfo (`user:password@`) are not fetched",
            ));
        }
        if self.allowlist.iter().any(|entry| entry.matches(&parsed)) {
            return Ok(parsed);
        }
        if parsed.scheme() != "https" {
            return Err(refused(
                "only https URLs are fetched (add its scheme, host and port to KIT_URL_ALLOWLIST to allow it)",
            ));
        }
        match parsed.host() {
            None => return Err(refused("the URL has no host")),
            Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
                return Err(refused(
                    "the address is loopback, private, link-local or otherwise not public",
                ));
            }
            Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
                return Err(refused(
                    "the address is loopback, private, link-local or otherwise not public",
                ));
            }
            Some(url::Host::Domain(domain))
                if domain.eq_ignore_ascii_case("localhost") || domain.ends_with(".localhost") =>
            {
                return Err(refused("localhost is not a public host"));
            }
            Some(_) => {}
        }
        Ok(parsed)
    }

    /// Sends one request, following redirects only to URLs that pass validation.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        range: Option<(u64, u64)>,
    ) -> Result<reqwest::Response, FetchError> {
        let mut current = url.clone();
        for _ in 0..=self.settings.max_redirects {
            if self.settings.proxy.is_some() {
                // The proxy resolves the name, so check its answers here first.
                self.check_proxied_host(&current).await?;
            }
            let mut request = self.client.request(method.clone(), current.clone());
            if let Some((start, end)) = range {
                request = request.header(RANGE, format!("bytes={start}-{end}"));
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            // reqwest names the whole URL in its text; the error keeps only the redacted one.
            let response = request.send().await.map_err(|e| FetchError::Transport {
                url: RedactedUrl::from(&current),
                message: error_chain(&e.without_url()),
            })?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| FetchError::Transport {
                        url: RedactedUrl::from(&current),
                        message: "redirect without Location".into(),
                    })?;
                let next = current.join(location).map_err(|e| FetchError::Refused {
                    url: RedactedUrl::new(location),
                    reason: format!("bad redirect target ({e})"),
                })?;
                current = self.validate(next.as_str())?;
                continue;
            }
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: RedactedUrl::from(&current),
                    status: response.status().as_u16(),
                });
            }
            return Ok(response);
        }
        Err(FetchError::RedirectLimit {
            url: RedactedUrl::from(url),
            max: self.settings.max_redirects,
        })
    }

    async fn probe(&self, url: Url) -> Result<Probe, FetchError> {
        // A pre-signed GET URL signs the method, so HEAD would be refused: probe with one byte.
        let presigned = url.query_pairs().any(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k == "x-amz-signature" || k == "x-goog-signature" || k == "sig" || k == "signature"
        });
        // A HEAD refused with 403/405 often means a signature bound to GET: probe with one byte.
        let head = if presigned {
            None
        } else {
            Some(self.send(Method::HEAD, &url, None).await)
        };
        if let Some(Ok(response)) = head {
            let headers = response.headers();
            let length = headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let ranges = headers
                .get(ACCEPT_RANGES)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
            return Ok(Probe {
                url: response.url().clone(),
                length,
                ranges,
            });
        }
        if let Some(Err(error)) = head
            && !matches!(
                error,
                FetchError::Status {
                    status: 403 | 405,
                    ..
                }
            )
        {
            return Err(error);
        }
        let response = self.send(Method::GET, &url, Some((0, 0))).await?;
        let final_url = response.url().clone();
        let headers = response.headers().clone();
        let partial = response.status() == StatusCode::PARTIAL_CONTENT;
        let total = headers
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok());
        let length = if partial {
            total
        } else {
            headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        };
        Ok(Probe {
            url: final_url,
            length,
            ranges: partial && total.is_some(),
        })
    }

    async fn single_get(
        &self,
        url: &Url,
        reservation: &mut Reservation,
    ) -> Result<(Bytes, Option<String>), FetchError> {
        let response = self.send(Method::GET, url, None).await?;
        let encoding = content_encoding(&response);
        let body = read_limited(response, self.settings.max_fetch_bytes, url, reservation).await?;
        Ok((body, encoding))
    }

    /// Parallel Range GETs in chunks, bounded concurrency, hedging slow chunks.
    async fn parallel_get(
        &self,
        url: &Url,
        length: u64,
    ) -> Result<(Bytes, Option<String>), FetchError> {
        let chunk = self.settings.chunk_size_bytes.max(1);
        let ranges: Vec<(u64, u64)> = (0..length.div_ceil(chunk))
            .map(|i| (i * chunk, ((i + 1) * chunk).min(length) - 1))
            .collect();
        let permits = Arc::new(Semaphore::new(self.settings.max_parallel_requests.max(1)));
        let timings = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
        let hedges_left = Arc::new(AtomicUsize::new(self.settings.max_speculative_hedges));
        let encoding = Arc::new(std::sync::Mutex::new(None::<String>));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, range) in ranges.iter().copied().enumerate() {
            let fetcher = self.clone();
            let url = url.clone();
            let permits = permits.clone();
            let timings = timings.clone();
            let hedges_left = hedges_left.clone();
            let encoding = encoding.clone();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .expect("semaphore never closes");
                let started = Instant::now();
                let (bytes, chunk_encoding) = fetcher
                    .hedged_chunk(&url, range, started, &timings, &hedges_left)
                    .await?;
                timings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(started.elapsed());
                if let Some(found) = chunk_encoding {
                    *encoding.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
                }
                Ok::<_, FetchError>((index, bytes))
            });
        }
        let mut parts: Vec<Option<Bytes>> = vec![None; ranges.len()];
        while let Some(joined) = tasks.join_next().await {
            let (index, bytes) = joined.map_err(|e| FetchError::Transport {
                url: RedactedUrl::from(url),
                message: e.to_string(),
            })??;
            let (start, end) = ranges[index];
            if bytes.len() as u64 != end - start + 1 {
                return Err(FetchError::Transport {
                    url: RedactedUrl::from(url),
                    message: format!("range {start}-{end} returned {} bytes", bytes.len()),
                });
            }
            parts[index] = Some(bytes);
        }
        let mut body = BytesMut::with_capacity(length as usize);
        for part in parts.into_iter().flatten() {
            body.extend_from_slice(&part);
        }
        let encoding = encoding.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((body.freeze(), encoding))
    }

    /// One chunk; if it runs longer than `multiplier x median` of finished
    /// chunks, a duplicate request races it (at most `max_speculative_hedges`).
    async fn hedged_chunk(
        &self,
        url: &Url,
        range: (u64, u64),
        started: Instant,
        timings: &std::sync::Mutex<Vec<Duration>>,
        hedges_left: &AtomicUsize,
    ) -> Result<(Bytes, Option<String>), FetchError> {
        let primary = self.range_get(url, range);
        tokio::pin!(primary);
        let hedge_trigger = async {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let median = median(&timings.lock().unwrap_or_else(|p| p.into_inner()));
                let Some(median) = median else { continue };
                let threshold = median
                    .mul_f64(self.settings.speculative_retry_multiplier)
                    .max(Duration::from_millis(50));
                if started.elapsed() > threshold {
                    let claimed = hedges_left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if claimed {
                        self.stats.hedges.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            result = &mut primary => result,
            _ = hedge_trigger => {
                // The first to succeed wins; one that fails leaves the chunk
                // to the other, and only both failing fails it.
                let hedge = self.range_get(url, range);
                tokio::pin!(hedge);
                tokio::select! {
                    result = &mut primary => match result {
                        Ok(chunk) => Ok(chunk),
                        Err(error) => hedge.await.map_err(|_| error),
                    },
                    result = &mut hedge => match result {
                        Ok(chunk) => Ok(chunk),
                        Err(error) => primary.await.map_err(|_| error),
                    },
                }
            }
        }
    }

    async fn range_get(
        &self,
        url: &Url,
        (start, end): (u64, u64),
    ) -> Result<(Bytes, Option<String>), FetchError> {
        let response = self.send(Method::GET, url, Some((start, end))).await?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(FetchError::Transport {
                url: RedactedUrl::from(url),
                message: "server ignored the Range header".into(),
            });
        }
        let encoding = content_encoding(&response);
        // The whole object was reserved before the ranges started.
        let bytes = read_limited(
            response,
            end - start + 1,
            url,
            &mut Reservation::untracked(),
        )
        .await?;
        Ok((bytes, encoding))
    }

    async fn decode(
        &self,
        url: &Url,
        body: Bytes,
        encoding: Option<&str>,
        reservation: &mut Reservation,
    ) -> Result<Bytes, FetchError> {
        let Some(encoding) = encoding.filter(|e| !e.eq_ignore_ascii_case("identity")) else {
            if body.len() as u64 > self.settings.max_decompressed_bytes {
                return Err(FetchError::DecodedTooLarge {
                    url: RedactedUrl::from(url),
                    limit: self.settings.max_decompressed_bytes,
                });
            }
            return Ok(body);
        };
        let codec = Codec::parse(encoding).ok_or_else(|| FetchError::Decode {
            url: RedactedUrl::from(url),
            message: format!("unsupported Content-Encoding `{encoding}`"),
        })?;
        let limit = self.settings.max_decompressed_bytes.min(usize::MAX as u64) as usize;
        let held = body.len() as u64;
        // Decoding runs off the async workers and grows the reservation as the
        // output grows, so a bomb stops at the cap or the budget, whichever is first.
        let mut owned = std::mem::take(reservation);
        let decoded = tokio::task::spawn_blocking(move || {
            let result = codec::decode_bounded(codec, &body, limit, &mut |bytes| {
                owned.grow_to(held + bytes as u64)
            });
            (result, owned)
        })
        .await
        .map_err(|e| FetchError::Decode {
            url: RedactedUrl::from(url),
            message: e.to_string(),
        })?;
        let (decoded, owned) = decoded;
        *reservation = owned;
        match decoded {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(codec::DecodeError::TooLarge { .. }) => Err(FetchError::DecodedTooLarge {
                url: RedactedUrl::from(url),
                limit: self.settings.max_decompressed_bytes,
            }),
            Err(codec::DecodeError::OverBudget) => Err(FetchError::OverBudget {
                url: RedactedUrl::from(url),
            }),
            Err(error) => Err(FetchError::Decode {
                url: RedactedUrl::from(url),
                message: error.to_string(),
            }),
        }
    }
}

fn content_encoding(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
    url: &Url,
    reservation: &mut Reservation,
) -> Result<Bytes, FetchError> {
    if let Some(length) = response.content_length()
        && length > limit
    {
        return Err(FetchError::TooLarge {
            url: RedactedUrl::from(url),
            size: length,
            limit,
        });
    }
    let expected = response.content_length().unwrap_or(0).min(limit);
    if !reservation.grow_to(expected) {
        return Err(FetchError::OverBudget {
            url: RedactedUrl::from(url),
        });
    }
    let mut body = BytesMut::with_capacity(expected as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::Transport {
        url: RedactedUrl::from(url),
        message: error_chain(&e.without_url()),
    })? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(FetchError::TooLarge {
                url: RedactedUrl::from(url),
                size: (body.len() + chunk.len()) as u64,
                limit,
            });
        }
        if !reservation.grow_to((body.len() + chunk.len()) as u64) {
            return Err(FetchError::OverBudget {
                url: RedactedUrl::from(url),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn median(timings: &[Duration]) -> Option<Duration> {
    if timings.is_empty() {
        return None;
    }
    let mut sorted = timings.to_vec();
    sorted.sort();
    Some(sorted[sorted.len() / 2])
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One `KIT_URL_ALLOWLIST` entry, parsed: a URL matches it when scheme and
/// host are equal, the port is equal (any port when the entry names none),
/// and the path lies under the entry's path at a `/` boundary.
///
/// ```
/// use kit_service::storage::fetch::AllowedOrigin;
/// let entry = AllowedOrigin::parse("http://127.0.0.1").unwrap();
/// let url = |text: &str| reqwest::Url::parse(text).unwrap();
/// assert!(entry.matches(&url("http://127.0.0.1:8333/bucket/key")));
/// assert!(!entry.matches(&url("http://127.0.0.1.evil.example/x")));
/// assert!(!entry.matches(&url("http://127.0.0.1:x@127.0.0.2/x")));
/// assert!(AllowedOrigin::parse("http://user@127.0.0.1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: String,
    host: url::Host<String>,
    /// `None`: any port.
    port: Option<u16>,
    /// Always ends with `/`; `/` allows every path.
    path: String,
}

impl AllowedOrigin {
    /// Parses `scheme://host[:port][/path]`; http and https only, no userinfo,
    /// query or fragment.
    pub fn parse(entry: &str) -> Result<AllowedOrigin, String> {
        let entry = entry.trim();
        let parsed = Url::parse(entry).map_err(|e| format!("`{entry}` is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{entry}` must be an http or https URL"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("`{entry}` must not carry userinfo"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("`{entry}` must not carry a query or fragment"));
        }
        let host = parsed
            .host()
            .ok_or_else(|| format!("`{entry}` has no host"))?
            .to_owned();
        // `Url` hides a default port (`:80` on http), so look at the text:
        // `http://h:80` pins port 80, `http://h` allows any port.
        let authority = entry
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .unwrap_or("");
        let explicit_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, tail)| !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()));
        let port = if explicit_port {
            parsed.port_or_known_default()
        } else {
            None
        };
        let mut path = parsed.path().to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(AllowedOrigin {
            scheme: parsed.scheme().to_string(),
            host,
            port,
            path,
        })
    }

    /// Whether `url` lies inside this entry (a URL with userinfo never does).
    pub fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host() else {
            return false;
        };
        url.username().is_empty()
            && url.password().is_none()
            && url.scheme() == self.scheme
            && host.to_owned() == self.host
            && self
                .port
                .is_none_or(|port| url.port_or_known_default() == Some(port))
            && (self.path == "/"
                || url.path() == self.path.trim_end_matches('/')
                || url.path().starts_with(&self.path))
    }

    /// Whether DNS answers for `name` are trusted (the entry names that domain).
    fn trusts_name(&self, name: &str) -> bool {
        match &self.host {
            url::Host::Domain(domain) => domain.eq_ignore_ascii_case(name),
            _ => false,
        }
    }
}

/// Validates `KIT_FETCH_PROXY`: an http or https URL with a host.
pub fn parse_proxy(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("`{text}` must be an http:// or https:// proxy URL"));
    }
    Ok(url)
}

/// Public unicast only: not loopback, private, link-local, CGNAT, unspecified,
/// multicast, documentation or unique-local.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// DNS answers pass the same public-address rule, unless the host is allowlisted.
struct SafeResolver {
    allowlist: Arc<[AllowedOrigin]>,
}

/// Resolves `host` and keeps the answers a fetch may connect to.
async fn safe_addresses(
    host: &str,
    allowlist: &[AllowedOrigin],
) -> Result<Vec<SocketAddr>, String> {
    let trusted = allowlist.iter().any(|entry| entry.trusts_name(host));
    let answers: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("`{host}` did not resolve ({e})"))?
        .collect();
    let allowed: Vec<SocketAddr> = answers
        .into_iter()
        .filter(|a| trusted || is_public(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "`{host}` resolves only to non-public addresses; refusing to connect"
        ));
    }
    Ok(allowed)
}

impl reqwest::dns::Resolve for SafeResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allowlist = self.allowlist.clone();
        Box::pin(async move {
            let allowed = safe_addresses(&host, &allowlist)
                .await
                .map_err(|reason| -> Box<dyn std::error::Error + Send + Sync> { reason.into() })?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Fetcher {
    /// With a configured proxy the resolver never runs (the proxy resolves),
    /// so a named host is resolved and checked here before the request.
    async fn check_proxied_host(&self, url: &Url) -> Result<(), FetchError> {
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(()); // literals were checked by `validate`
        };
        if self.allowlist.iter().any(|entry| entry.matches(url)) {
            return Ok(());
        }
        safe_addresses(host, &self.allowlist)
            .await
            .map(|_| ())
            .map_err(|reason| FetchError::Refused {
                url: RedactedUrl::from(url),
                reason,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetcher(allowlist: &[&str]) -> Fetcher {
        let settings = FetchSettings {
            allowlist: allowlist.iter().map(|s| s.to_string()).collect(),
            ..FetchSettings::default()
        };
        Fetcher::new(settings).unwrap()
    }

    fn refused(fetcher: &Fetcher, url: &str) -> bool {
        matches!(fetcher.validate(url), Err(FetchError::Refused { .. }))
    }

    #[test]
    fn ssrf_targets_are_refused() {
        let fetcher = fetcher(&[]);
        for url in [
            "http://bucket.example.com/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/x",
            "https://127.0.0.1:8333/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://localhost/x",
            "https://[::ffff:192.168.0.1]/x",
            "file:///etc/passwd",
        ] {
            assert!(refused(&fetcher, url), "{url} should be refused");
        }
        assert!(
            fetcher
                .validate("https://bucket.s3.amazonaws.com/x?X-Amz-Signature=1")
                .is_ok()
        );
    }

    #[test]
    fn allowlist_matches_at_a_boundary() {
        let fetcher = fetcher(&["http://127.0.0.1"]);
        assert!(fetcher.validate("http://127.0.0.1:8333/b/k").is_ok());
        assert!(refused(&fetcher, "http://127.0.0.1.evil.example/x"));
        assert!(refused(&fetcher, "http://10.0.0.1/x"));
        assert!(
            refused(&fetcher, "https://127.0.0.1/x"),
            "the scheme is part of the entry"
        );
    }

    #[test]
    fn userinfo_is_refused_even_when_the_prefix_matches() {
        // Regression: `http://127.0.0.1:x@127.0.0.2:PORT/obj` passed a string-prefix
        // allowlist of `http://127.0.0.1` and was fetched from 127.0.0.2.
        let fetcher = fetcher(&["http://127.0.0.1"]);
        for url in [
            "http://127.0.0.1:x@127.0.0.2:8333/obj",
            "http://127.0.0.1@127.0.0.2/obj",
            "http://user:pw@127.0.0.1/obj",
            "https://user@bucket.s3.amazonaws.com/x",
        ] {
            assert!(refused(&fetcher, url), "{url} should be refused");
        }
    }

    #[test]
    fn allowlist_entries_pin_port_and_path() {
        let fetcher = fetcher(&["http://127.0.0.1:8333/objects", "https://store.internal"]);
        assert!(fetcher.validate("http://127.0.0.1:8333/objects/a").is_ok());
        assert!(fetcher.validate("http://127.0.0.1:8333/objects").is_ok());
        assert!(refused(&fetcher, "http://127.0.0.1:8334/objects/a"));
        assert!(refused(&fetcher, "http://127.0.0.1:8333/objectsx/a"));
        assert!(refused(&fetcher, "http://127.0.0.1:8333/other"));
        assert!(fetcher.validate("https://STORE.internal:9000/x").is_ok());
        assert!(refused(&fetcher, "http://store.internal/x"));
        let pinned = AllowedOrigin::parse("http://127.0.0.1:80").unwrap();
        assert!(pinned.matches(&Url::parse("http://127.0.0.1/x").unwrap()));
        assert!(!pinned.matches(&Url::parse("http://127.0.0.1:81/x").unwrap()));
        for bad in [
            "127.0.0.1",
            "ftp://h",
            "http://u:p@h",
            "http://h/?q",
            "not a url",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_addresses() {
        assert!(is_public("8.8.8.8".parse().unwrap()));
        assert!(!is_public("100.64.0.1".parse().unwrap()));
        assert!(!is_public("0.0.0.0".parse().unwrap()));
        assert!(!is_public("fe80::1".parse().unwrap()));
        assert!(is_public("2606:4700::1111".parse().unwrap()));
    }
}
