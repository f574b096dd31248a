//! `kit.Probe.v1` and its caller through real sockets: the doctor's OPS003
//! proof that a result travels through external storage and that a stream
//! started on one replica continues on another.

use std::collections::HashMap;
use std::time::Duration;

use kit_service::config::Config;
use kit_service::probe::client::ProbeCaller;
use kit_service::serve::{Drain, build_server_at, serve_until};

const KEY: &str = "hex:5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kit-service (demo protocol) with `settings` on a free port; `storage`
/// adds the local backend with a tiny threshold.
async fn start(settings: &[(&str, &str)], storage: bool) -> Running {
    let dir = std::env::temp_dir().join(format!(
        "kit-probe-test-{}",
        kit_service::http::random_hex(6)
    ));
    let mut env: HashMap<String, String> = HashMap::new();
    if storage {
        env.insert("KIT_STORAGE".into(), "local".into());
        env.insert("KIT_STORAGE_DIR".into(), dir.display().to_string());
    }
    env.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let server = build_server_at(&config, vec![kit_service::demo::protocol()], "", bound).unwrap();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(5),
    };
    tokio::spawn(serve_until(listener, server, drain, async move {
        let _ = signal.await;
    }));
    Running {
        url: format!("http://{bound}"),
        stop: Some(stop),
        dir,
    }
}

fn caller(api_key: Option<&str>) -> ProbeCaller {
    ProbeCaller::new(Duration::from_secs(10), api_key.map(str::to_string)).unwrap()
}

#[tokio::test]
async fn a_stream_started_on_one_replica_continues_on_another() {
    let first = start(&[("VGI_SIGNING_KEY", KEY)], false).await;
    let second = start(&[("VGI_SIGNING_KEY", KEY)], false).await;
    let proof = caller(None)
        .stream_across(&first.url, &second.url, 3)
        .await
        .unwrap();
    assert_eq!(proof.ticks, vec![0, 1, 2]);
    let first_server = proof.first_server.clone().unwrap();
    assert_eq!(proof.continued_by.len(), 2, "{proof:?}");
    assert!(
        proof.continued_by.iter().all(|s| *s != first_server),
        "{proof:?}"
    );
}

#[tokio::test]
async fn replicas_with_different_keys_refuse_each_others_streams() {
    let first = start(&[("VGI_SIGNING_KEY", KEY)], false).await;
    let other = "hex:".to_string() + &"17".repeat(32);
    let second = start(&[("VGI_SIGNING_KEY", other.as_str())], false).await;
    let error = caller(None)
        .stream_across(&first.url, &second.url, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ticks/exchange") && error.contains("400"),
        "{error}"
    );
}

#[tokio::test]
async fn a_result_travels_through_storage_byte_for_byte() {
    for compression in ["off", "zstd:3", "gzip:6"] {
        let replica = start(
            &[
                ("KIT_EXTERNALIZE_COMPRESSION", compression),
                ("KIT_URL_ALLOWLIST", "http://127.0.0.1"),
            ],
            true,
        )
        .await;
        caller(None)
            .external(&replica.url, 300_000, 42)
            .await
            .unwrap_or_else(|e| panic!("{compression}: {e}"));
    }
}

#[tokio::test]
async fn an_unreachable_replica_is_not_a_finding() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = caller(None)
        .stream_across(&closed, &closed, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            kit_service::probe::client::ProbeError::Unreachable(_)
        ),
        "{error:?}"
    );
    let replica = start(&[], false).await;
    let error = caller(None).external(&replica.url, 0, 1).await.unwrap_err();
    assert!(
        matches!(&error, kit_service::probe::client::ProbeError::Failed(m) if m.contains("bytes must be within")),
        "{error:?}"
    );
}

#[tokio::test]
async fn without_storage_or_with_the_probe_off_the_caller_says_why() {
    let plain = start(&[], false).await;
    let error = caller(None)
        .external(&plain.url, 10, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no external storage configured"), "{error}");
    let off = start(&[("KIT_PROBE", "false")], false).await;
    let error = caller(None)
        .stream_across(&off.url, &off.url, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("404") && error.contains("KIT_PROBE=false"),
        "{error}"
    );
}

#[tokio::test]
async fn the_probe_is_behind_auth_and_unlisted() {
    let replica = start(
        &[
            ("KIT_API_KEYS", "doctor=s3cret-doctor-key"),
            ("KIT_REQUIRE_AUTH", "true"),
        ],
        false,
    )
    .await;
    let error = caller(None)
        .stream_across(&replica.url, &replica.url, 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("401"), "{error}");
    let proof = caller(Some("s3cret-doctor-key"))
        .stream_across(&replica.url, &replica.url, 2)
        .await
        .unwrap();
    assert_eq!(proof.ticks, vec![0, 1]);
}
