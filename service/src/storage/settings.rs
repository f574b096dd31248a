//! Resolved storage and fetch settings (parsed from the environment by
//! `config.rs`, which lists every variable once).

use std::time::Duration;

/// Which backend holds externalized batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Local,
    S3,
    Gcs,
    Azure,
    /// The conformance suite's fake-storage service (tests only).
    Fake,
}

impl Provider {
    pub fn parse(text: &str) -> Option<Provider> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Some(Provider::Local),
            "s3" => Some(Provider::S3),
            "gcs" => Some(Provider::Gcs),
            "azure" => Some(Provider::Azure),
            "fake" => Some(Provider::Fake),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Azure => "azure",
            Provider::Fake => "fake",
        }
    }
}

/// Compression of externalized objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    Zstd(i32),
    Gzip(u32),
}

impl Compression {
    /// `zstd:3`, `gzip:6`, `zstd`, `gzip` or `off`.
    pub fn parse(text: &str) -> Result<Compression, String> {
        let text = text.trim().to_ascii_lowercase();
        let (algorithm, level) = match text.split_once(':') {
            Some((a, l)) => (a.to_string(), Some(l.to_string())),
            None => (text.clone(), None),
        };
        let level_number =
            |default: i64, range: std::ops::RangeInclusive<i64>| -> Result<i64, String> {
                match &level {
                    None => Ok(default),
                    Some(l) => l
                        .parse::<i64>()
                        .ok()
                        .filter(|l| range.contains(l))
                        .ok_or_else(|| format!("level `{l}` must be within {range:?}")),
                }
            };
        match algorithm.as_str() {
            "off" | "none" if level.is_none() => Ok(Compression::Off),
            "zstd" => Ok(Compression::Zstd(level_number(3, 1..=22)? as i32)),
            "gzip" => Ok(Compression::Gzip(level_number(6, 1..=9)? as u32)),
            _ => Err(format!(
                "expected `zstd:LEVEL`, `gzip:LEVEL` or `off`, got `{text}`"
            )),
        }
    }

    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::Off => None,
            Compression::Zstd(_) => Some("zstd"),
            Compression::Gzip(_) => Some("gzip"),
        }
    }
}

/// Limits and tuning of the fetch client; defaults equal vgi-rpc's `FetchConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    pub parallel_threshold_bytes: u64,
    pub chunk_size_bytes: u64,
    pub max_parallel_requests: usize,
    pub timeout: Duration,
    pub max_fetch_bytes: u64,
    pub max_decompressed_bytes: u64,
    pub speculative_retry_multiplier: f64,
    pub max_speculative_hedges: usize,
    pub max_retries: usize,
    pub retry_delay: Duration,
    pub max_redirects: usize,
    /// Origins (`scheme://host[:port][/path]`) exempt from the https-only and
    /// public-address rules, compared parsed (see `fetch::AllowedOrigin`).
    pub allowlist: Vec<String>,
    /// The only proxy pointer fetches use (`KIT_FETCH_PROXY`); the process's
    /// `HTTP(S)_PROXY`/`ALL_PROXY` are ignored.
    pub proxy: Option<String>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        let max_fetch_bytes = 256 * 1024 * 1024;
        FetchSettings {
            parallel_threshold_bytes: 64 * 1024 * 1024,
            chunk_size_bytes: 8 * 1024 * 1024,
            max_parallel_requests: 8,
            timeout: Duration::from_secs(60),
            max_fetch_bytes,
            max_decompressed_bytes: 16 * max_fetch_bytes,
            speculative_retry_multiplier: 2.0,
            max_speculative_hedges: 4,
            max_retries: 2,
            retry_delay: Duration::from_millis(500),
            max_redirects: 5,
            allowlist: Vec::new(),
            proxy: None,
        }
    }
}

/// Everything about external storage the service needs.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub provider: Provider,
    pub bucket: Option<String>,
    /// Key prefix of every object the service writes (lifecycle rules must cover it).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Local backend: where objects live on disk.
    pub dir: Option<String>,
    /// Local backend: the base URL clients reach this service at.
    pub public_url: Option<String>,
    pub threshold_bytes: u64,
    pub compression: Compression,
    pub presign_ttl: Duration,
    pub max_upload_bytes: Option<u64>,
    pub max_externalized_response_bytes: Option<u64>,
    /// Local backend: objects older than this are deleted, as a bucket's
    /// lifecycle rule would (`None`: kept).
    pub expiry: Option<Duration>,
    /// Local backend: how often the expiry sweep runs.
    pub sweep_interval: Duration,
    /// Local backend: an upload that sends nothing for this long gets 408.
    pub upload_read_timeout: Duration,
}

impl StorageSettings {
    pub fn local(dir: impl Into<String>, public_url: impl Into<String>) -> Self {
        StorageSettings {
            provider: Provider::Local,
            bucket: None,
            prefix: "vgi-rpc/".into(),
            endpoint: None,
            region: None,
            dir: Some(dir.into()),
            public_url: Some(public_url.into()),
            threshold_bytes: 1024 * 1024,
            compression: Compression::Off,
            presign_ttl: Duration::from_secs(3600),
            max_upload_bytes: None,
            max_externalized_response_bytes: None,
            expiry: Some(Duration::from_secs(24 * 3600)),
            sweep_interval: Duration::from_secs(3600),
            upload_read_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses_levels_and_refuses_nonsense() {
        assert_eq!(Compression::parse("zstd:3"), Ok(Compression::Zstd(3)));
        assert_eq!(Compression::parse("gzip"), Ok(Compression::Gzip(6)));
        assert_eq!(Compression::parse("off"), Ok(Compression::Off));
        assert!(Compression::parse("zstd:99").is_err());
        assert!(Compression::parse("brotli").is_err());
    }
}
