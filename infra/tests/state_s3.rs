//! The S3 state backend against real servers on loopback: SeaweedFS and
//! moto_server both refuse a second `PutObject` with `If-None-Match: *`
//! (412), which is the whole lock. `.ci/test-aws` starts them and exports
//! `KIT_TEST_S3_ENDPOINT` and `KIT_TEST_MOTO_ENDPOINT`; without them these
//! tests fail, they never skip.
#![cfg(feature = "aws")]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use deploy_kit::engine::State;
use deploy_kit::state::{S3Backend, StateError, StateLocation, Store};

fn endpoint(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("`{name}` is not set: run `bash .ci/test-aws`, which starts SeaweedFS and moto_server")
        })
}

fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

fn make_bucket(endpoint: &str, bucket: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients =
        deploy_kit::engine::aws::clients::AwsClients::new("us-east-1", Some(endpoint)).unwrap();
    runtime
        .block_on(clients.s3.create_bucket().bucket(bucket).send())
        .unwrap();
}

fn store(endpoint: &str, bucket: &str) -> Store {
    Store::with_backend(
        Box::new(S3Backend::new(bucket, "us-east-1", Some(endpoint)).unwrap()),
        StateLocation::S3 {
            bucket: bucket.into(),
            prefix: "teams".into(),
        },
        "teams/svc/production/lambda/state.json",
        "lambda",
    )
}

/// Eight runs race for the lock at once: exactly one gets it, the others
/// name the winner; then state round-trips and the lock is freed.
fn exclusive_lock(endpoint: &str) {
    let bucket = unique("state");
    make_bucket(endpoint, &bucket);
    let barrier = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let barrier = barrier.clone();
            let endpoint = endpoint.to_string();
            let bucket = bucket.clone();
            std::thread::spawn(move || {
                let store = store(&endpoint, &bucket);
                barrier.wait();
                store.lock(&format!("up #{i}"), Duration::ZERO)
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one run holds the lock");
    let winner = winners[0].clone();
    for result in &results {
        if let Err(error) = result {
            match error {
                StateError::Locked { holder, .. } => assert_eq!(holder.id, winner.id),
                other => panic!("expected Locked, got {other}"),
            }
        }
    }
    let store = store(endpoint, &bucket);
    assert_eq!(store.holder().unwrap().unwrap(), winner);
    assert!(matches!(
        store.unlock("not-the-id"),
        Err(StateError::WrongLock { .. })
    ));
    let mut state = State::new("aws", "production", "lambda");
    state.record(deploy_kit::engine::Resource::new("bucket", "data"));
    let bytes = serde_json::to_vec_pretty(&state).unwrap();
    store.push(&bytes, "test").unwrap();
    assert_eq!(store.pull().unwrap().unwrap(), bytes);
    store.unlock(&winner.id).unwrap();
    assert!(store.holder().unwrap().is_none());
    store.lock("down", Duration::ZERO).unwrap();
}

#[test]
fn the_s3_lock_is_exclusive_on_seaweedfs() {
    exclusive_lock(&endpoint("KIT_TEST_S3_ENDPOINT"));
}

#[test]
fn the_s3_lock_is_exclusive_on_moto() {
    exclusive_lock(&endpoint("KIT_TEST_MOTO_ENDPOINT"));
}

#[test]
fn an_unreachable_bucket_is_a_clear_error_and_takes_no_lock() {
    // Nothing listens on port 9 of loopback.
    let store = store("http://127.0.0.1:9", "nowhere");
    match store.lock("up", Duration::ZERO) {
        Err(StateError::Unreachable { location, .. }) => {
            assert!(location.contains("s3://nowhere/"), "{location}")
        }
        other => panic!("expected Unreachable, got {:?}", other.map(|l| l.id)),
    }
    let missing = self::store(&endpoint("KIT_TEST_S3_ENDPOINT"), &unique("absent"));
    assert!(matches!(
        missing.lock("up", Duration::ZERO),
        Err(StateError::Unreachable { .. })
    ));
}

/// Finding: `plan` read only the local `state.json`, so on a fresh checkout
/// (CI) with `state: s3://...` it showed everything as "to create" and none
/// of the deletes `up`, which pulls the remote state, would then make.
#[test]
fn plan_is_made_against_the_remote_state_up_would_use() {
    let moto = endpoint("KIT_TEST_MOTO_ENDPOINT");
    let bucket = unique("plan-state");
    make_bucket(&moto, &bucket);
    let recorded = r#"{"schema":"deploy-kit.state/v1","engine":"aws","environment":"test","target":"lambda","id":"0011223344556677","resources":[{"kind":"bucket","name":"legacy-data","settings":{}}]}"#;
    Store::with_backend(
        Box::new(S3Backend::new(&bucket, "us-east-1", Some(&moto)).unwrap()),
        StateLocation::S3 {
            bucket: bucket.clone(),
            prefix: "teams".into(),
        },
        "teams/svc/test/lambda/state.json",
        "lambda",
    )
    .push(recorded.as_bytes(), "the test's state")
    .unwrap();
    // A fresh checkout: no `.deploy-kit/`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy-kit.yaml"),
        format!(
            "version: 1\nstate: s3://{bucket}/teams\nservice: {{name: svc, environment: test, package: svc}}\ntargets:\n  lambda: {{platform: aws-lambda-function-url, region: us-east-1}}\n"
        ),
    )
    .unwrap();
    let plan = || {
        assert_cmd::Command::cargo_bin("deploy-kit")
            .unwrap()
            .args(["plan", "lambda", "--force"])
            .current_dir(dir.path())
            .env("AWS_ENDPOINT_URL", &moto)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_STATE")
            .env_remove("DEPLOY_KIT_TARGET")
            .output()
            .unwrap()
    };
    let output = plan();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "changes: {stdout}\n{stderr}");
    assert!(
        stdout.contains("- delete bucket/legacy-data"),
        "the remote state's bucket, which `up` would prune:\n{stdout}\n{stderr}"
    );
    let working = dir.path().join(".deploy-kit/test/lambda/state.json");
    let pulled = std::fs::read_to_string(&working).unwrap();
    assert!(pulled.contains("legacy-data"), "{pulled}");

    // A stale local copy does not win: the remote state does, and the copy is kept aside.
    std::fs::write(&working, recorded.replace("legacy-data", "stale-local")).unwrap();
    let output = plan();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("- delete bucket/legacy-data"), "{stdout}");
    assert!(!stdout.contains("stale-local"), "{stdout}");
    let kept = std::fs::read_to_string(working.with_extension("json.replaced")).unwrap();
    assert!(kept.contains("stale-local"), "{kept}");
}
