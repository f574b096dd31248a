//! The shared store (`KIT_RATE_LIMIT_STORE=redis://...`): one GCRA limit
//! held in Redis for every replica.
//!
//! Each decision is one `EVALSHA` of [`GCRA_SCRIPT`], which reads Redis's own
//! clock (`TIME`), so replicas with skewed clocks still agree, and updates the
//! caller's TAT atomically, so concurrent replicas never both spend the last
//! request. A key expires (`PX`) when its TAT passes: Redis holds only the
//! callers active within one period.
//!
//! A store that does not answer within [`STORE_TIMEOUT`] is not waited for:
//! the caller decides what a failure means (`KIT_RATE_LIMIT_STORE_FAILURE`),
//! and for [`RETRY_AFTER_FAILURE`] after a failure no request tries Redis
//! again, so an outage costs each request nothing, not a timeout.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::local::Gcra;
use super::{Caller, Decision, RateLimit};

/// How long a decision waits for Redis (connect or script).
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long after a failure requests skip Redis.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// GCRA in microseconds of Redis's clock. `KEYS[1]`: the caller's key;
/// `ARGV`: interval, period, 1 to count the request or 0 to only ask.
/// Returns `{allowed, remaining, retry_after_seconds}`.
pub const GCRA_SCRIPT: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local ahead = tat + interval - now
if ahead > period then
  return {0, 0, math.ceil((ahead - period) / 1000000)}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.ceil(ahead / 1000))
end
return {1, math.floor((period - ahead) / interval), 0}
"#;

/// Why the shared store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`KIT_RATE_LIMIT_STORE` is not a redis URL: {0}")]
    Url(String),
    #[error("the rate-limit store `{store}` failed: {source}")]
    Redis {
        store: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("the rate-limit store `{0}` did not answer within {STORE_TIMEOUT:?}")]
    Timeout(String),
    #[error("the rate-limit store `{0}` failed less than {RETRY_AFTER_FAILURE:?} ago")]
    Backoff(String),
}

/// A Redis holding every replica's buckets.
pub struct SharedStore {
    client: redis::Client,
    /// The URL without its password, for messages.
    display: String,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    retry_at: Mutex<Option<Instant>>,
    healthy: AtomicBool,
    script: redis::Script,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedStore({})", self.display)
    }
}

impl SharedStore {
    /// Parses `url` (`redis://[user:password@]host:port[/db]`); connects on first use.
    pub fn open(url: &str) -> Result<SharedStore, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| StoreError::Url(e.to_string()))?;
        if !matches!(parsed.scheme(), "redis" | "redis+unix" | "unix") {
            return Err(StoreError::Url(format!(
                "scheme `{}` is not `redis`",
                parsed.scheme()
            )));
        }
        let client = redis::Client::open(url).map_err(|e| StoreError::Url(e.to_string()))?;
        let mut shown = parsed.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        Ok(SharedStore {
            client,
            display: shown.to_string(),
            connection: tokio::sync::Mutex::new(None),
            retry_at: Mutex::new(None),
            healthy: AtomicBool::new(true),
            script: redis::Script::new(GCRA_SCRIPT),
        })
    }

    /// The store's URL, password hidden.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The decision for `caller` under `limit` in `namespace`; counts the
    /// request when `consume`.
    pub async fn decide(
        &self,
        namespace: &str,
        caller: &Caller,
        limit: &RateLimit,
        consume: bool,
    ) -> Result<Decision, StoreError> {
        if let Some(at) = *self.retry_at.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < at
        {
            return Err(StoreError::Backoff(self.display.clone()));
        }
        let gcra = Gcra::of(limit, 1000);
        // The limit is part of the key: replicas configured differently
        // (a rollout changing `KIT_RATE_LIMIT`) never read each other's TATs.
        let key = format!(
            "kit:rl:{namespace}:{}/{}:{caller}",
            limit.requests,
            limit.per.as_secs()
        );
        let attempt = async {
            let mut connection = self.connection().await?;
            let result: Result<(i64, i64, i64), StoreError> = self
                .script
                .key(&key)
                .arg(gcra.interval)
                .arg(gcra.period)
                .arg(if consume { 1 } else { 0 })
                .invoke_async(&mut connection)
                .await
                .map_err(|source| self.redis_error(source));
            if result.is_err() {
                *self.connection.lock().await = None;
            }
            result
        };
        let outcome = match tokio::time::timeout(STORE_TIMEOUT, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                *self.connection.lock().await = None;
                Err(StoreError::Timeout(self.display.clone()))
            }
        };
        match outcome {
            Ok((allowed, remaining, retry_after)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.display, "the rate-limit store answers again");
                }
                Ok(Decision {
                    allowed: allowed == 1,
                    limit: limit.requests,
                    remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
                    retry_after: retry_after.max(0) as u64,
                })
            }
            Err(error) => {
                *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + RETRY_AFTER_FAILURE);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %error, "the rate-limit store failed; decisions follow KIT_RATE_LIMIT_STORE_FAILURE until it answers");
                }
                Err(error)
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| self.redis_error(source))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn redis_error(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            store: self.display.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        let store = SharedStore::open("redis://:hunter2@10.0.0.5:6379/2").unwrap();
        assert!(!store.display().contains("hunter2"), "{}", store.display());
        assert!(store.display().contains("10.0.0.5:6379"));
        assert!(matches!(
            SharedStore::open("http://10.0.0.5:6379"),
            Err(StoreError::Url(_))
        ));
        assert!(matches!(
            SharedStore::open("not a url"),
            Err(StoreError::Url(_))
        ));
    }
}
