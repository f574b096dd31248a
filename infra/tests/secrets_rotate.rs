//! `deploy-kit secrets rotate` against two real kit-service replicas sharing
//! file-based keys: open `ticks` streams keep working through stage, roll,
//! promote and roll (each turn alternating replicas), retiring early is
//! refused, and a forced early retire fails exactly the streams the wait
//! protects. No key value appears in any output, state file or replica log.
//!
//! The replicas are the workspace's `target/debug/kit-service`; the test
//! fails (never skips) when it is missing: run `cargo build -p kit-service`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploy_kit::secrets::RotationTarget;
use deploy_kit::secrets::replicas::ProcessReplicas;
use deploy_kit::secrets::rotation::{Requested, RotationState, Step, TOO_EARLY_EXIT};
use deploy_kit::secrets::store::{self, FileKeyStore, KeyStore, Secret};
use kit_service::probe::client::{ProbeCaller, TickStream};

/// `target/debug/kit-service` of this workspace build.
fn kit_service() -> PathBuf {
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("debug").join("kit-service"));
    // The test binary is target/debug/deps/secrets_rotate-HASH.
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|d| d.join("kit-service")));
    from_env
        .into_iter()
        .chain(beside)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `kit-service` binary in the target directory: run `cargo build -p kit-service` first (looked in `$CARGO_TARGET_DIR/debug` and beside the test binary)"
            )
        })
}

/// Every key value the stores ever held in this test, bare hex.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn record(&mut self, store: &FileKeyStore) {
        let keys = store.read().unwrap();
        for secret in [Some(keys.primary), keys.pending, keys.previous]
            .into_iter()
            .flatten()
        {
            let bare = secret.expose().trim_start_matches("hex:").to_string();
            if !self.0.contains(&bare) {
                self.0.push(bare);
            }
        }
    }

    fn assert_absent(&self, label: &str, text: &str) {
        for value in &self.0 {
            assert!(
                !text.contains(value.as_str()),
                "a key value appears in {label}:\n{text}"
            );
        }
    }
}

struct Client {
    runtime: tokio::runtime::Runtime,
    caller: ProbeCaller,
}

impl Client {
    fn new() -> Client {
        Client {
            // Multi-thread: pooled connections are watched between turns, so one a
            // restarted replica closed is dropped, as in a long-lived client.
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            caller: ProbeCaller::new(Duration::from_secs(10), None).unwrap(),
        }
    }

    fn open(&self, url: &str) -> TickStream {
        self.runtime
            .block_on(self.caller.open_ticks(url, 1000))
            .unwrap_or_else(|e| panic!("opening a stream on {url} failed: {e}"))
    }

    /// One turn on each replica in turn; the ticks must continue in order.
    fn continue_on_both(&self, stream: &mut TickStream, urls: &[String], label: &str) {
        for url in urls {
            let expected = stream.ticks.len() as i64;
            let ticks = self
                .runtime
                .block_on(self.caller.next_turn(stream, url))
                .unwrap_or_else(|e| panic!("{label}: a turn on {url} failed: {e}"));
            assert_eq!(ticks, vec![expected], "{label}: turn on {url}");
        }
    }

    fn healthz(&self, url: &str) -> String {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        agent
            .get(format!("{url}/healthz"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }
}

fn rotate(
    target: &mut RotationTarget,
    requested: Requested,
    force: bool,
    now: &dyn Fn() -> u64,
    output: &mut Vec<u8>,
) -> Result<String, deploy_kit::CommandError> {
    let start = output.len();
    target.rotate(requested, force, now, output)?;
    Ok(String::from_utf8_lossy(&output[start..]).into_owned())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn open_streams_survive_a_rotation_across_two_replicas() {
    let binary = kit_service();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(".deploy-kit/ci/processes");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let first = Secret::generate().unwrap();
    store::write_atomically(
        &state_dir.join(store::PRIMARY_FILE),
        format!("{}\n", first.expose()).as_bytes(),
        0o600,
    )
    .unwrap();
    let file_store = FileKeyStore::new(&state_dir);
    let mut seen = Seen::default();
    seen.record(&file_store);

    let base_env = vec![
        ("KIT_TOKEN_TTL".to_string(), "3600".to_string()),
        ("KIT_SHUTDOWN_GRACE".to_string(), "5".to_string()),
        ("KIT_LOG_FORMAT".to_string(), "text".to_string()),
        ("KIT_PROBE".to_string(), "true".to_string()),
    ];
    let replicas = ProcessReplicas::start(
        &binary,
        2,
        base_env,
        &file_store.replica_keys(&file_store.read().unwrap()),
        Some(&logs),
    )
    .unwrap();
    let urls = replicas.urls();
    let state_path = state_dir.join("rotation.json");
    let mut target = RotationTarget {
        name: "processes".to_string(),
        store: Box::new(file_store.clone()),
        replicas: Box::new(replicas),
        state_path: state_path.clone(),
        token_ttl_seconds: 3600,
        command: "deploy-kit secrets rotate --target processes".to_string(),
    };
    let clock = Cell::new(deploy_kit::secrets::rotation::now());
    let now = || clock.get();
    let client = Client::new();
    let mut output = Vec::new();

    // Opened before the rotation: its call token is signed by the first key.
    let mut before = client.open(&urls[0]);
    client.continue_on_both(&mut before, &urls, "before any step");

    let text = rotate(
        &mut target,
        Requested::One(Step::Stage),
        false,
        &now,
        &mut output,
    )
    .unwrap();
    seen.record(&file_store);
    assert!(text.contains("roll: replica 2/2"), "{text}");
    assert!(
        text.contains("next: `deploy-kit secrets rotate --target processes --phase promote`"),
        "{text}"
    );
    client.continue_on_both(&mut before, &urls, "after stage and roll");
    let staged = RotationState::load(&state_path).unwrap().unwrap();
    let new_fingerprint = staged.pending.clone().unwrap();
    assert_eq!(
        staged.primary.as_deref(),
        Some(first.fingerprint().as_str())
    );
    // Still signing with the old key.
    assert!(client.healthz(&urls[1]).contains(&first.fingerprint()));

    let text = rotate(
        &mut target,
        Requested::One(Step::Promote),
        false,
        &now,
        &mut output,
    )
    .unwrap();
    seen.record(&file_store);
    assert!(
        text.contains(&format!("promote: {new_fingerprint} signs")),
        "{text}"
    );
    client.continue_on_both(&mut before, &urls, "after promote and roll");
    for url in &urls {
        assert!(
            client.healthz(url).contains(&new_fingerprint),
            "{url} signs with the new key"
        );
    }
    let promoted = RotationState::load(&state_path).unwrap().unwrap();
    let allowed_at = promoted.retire_allowed_at().unwrap();
    assert_eq!(allowed_at, promoted.promoted_at.unwrap() + 3600);

    // Opened after the promote: signed by the new key only.
    let mut after = client.open(&urls[1]);
    client.continue_on_both(&mut after, &urls, "stream opened after promote");

    // Retiring within the token lifetime is refused, with the time and the command.
    let error = rotate(
        &mut target,
        Requested::One(Step::Retire),
        false,
        &now,
        &mut output,
    )
    .unwrap_err();
    assert_eq!(error.exit_code, TOO_EARLY_EXIT);
    let when = deploy_kit::secrets::rotation::utc(allowed_at);
    assert!(error.message.contains(&when), "{}", error.message);
    assert_eq!(
        error.hint,
        format!(
            "run `deploy-kit secrets rotate --target processes --phase retire` after {when}; `--force` retires now and fails those streams"
        )
    );
    // `auto` takes no unsafe step either.
    let text = rotate(&mut target, Requested::Auto, false, &now, &mut output).unwrap();
    assert!(text.contains("nothing to do now"), "{text}");
    client.continue_on_both(&mut before, &urls, "after the refused retire");

    // Forced early: the old key goes, and with it the stream it signed.
    let text = rotate(
        &mut target,
        Requested::One(Step::Retire),
        true,
        &now,
        &mut output,
    )
    .unwrap();
    assert!(text.contains("retire: "), "{text}");
    assert!(text.contains("verify with no other key"), "{text}");
    client.continue_on_both(
        &mut after,
        &urls,
        "stream opened after promote, after retire",
    );
    let failed = client
        .runtime
        .block_on(client.caller.next_turn(&mut before, &urls[0]))
        .expect_err("a stream whose call token the retired key signed must fail");
    assert!(failed.to_string().contains("signature"), "{failed}");

    // With the wait honoured nothing fails: the next rotation's retire
    // goes through without --force once the clock passes the lifetime.
    let text = rotate(&mut target, Requested::Auto, false, &now, &mut output).unwrap();
    seen.record(&file_store);
    assert!(
        text.contains("stage: ") && text.contains("promote: "),
        "{text}"
    );
    assert!(
        !text.contains("retire: "),
        "auto stops before an unsafe retire\n{text}"
    );
    client.continue_on_both(&mut after, &urls, "after auto stage and promote");
    let allowed_at = RotationState::load(&state_path)
        .unwrap()
        .unwrap()
        .retire_allowed_at()
        .unwrap();
    clock.set(allowed_at);
    let text = rotate(&mut target, Requested::Auto, false, &now, &mut output).unwrap();
    assert!(text.contains("retire: "), "{text}");

    // No key value in what was printed, the state file or the replicas' logs.
    let printed = String::from_utf8_lossy(&output).into_owned();
    assert_eq!(seen.0.len(), 3, "three keys were made");
    seen.assert_absent("the command output", &printed);
    seen.assert_absent("rotation.json", &read(&state_path));
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        seen.assert_absent(&path.display().to_string(), &read(&path));
    }
    drop(target);
}

/// The CLI on `up local`'s files (no deploy-kit.yaml): it cannot restart
/// that process, so it prints the roll and stops; every step's output,
/// stderr included, and the state file are free of key values.
#[test]
fn cli_rotates_local_files_and_never_prints_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(".deploy-kit/local");
    let first = Secret::generate().unwrap();
    store::write_atomically(
        &state_dir.join(store::PRIMARY_FILE),
        format!("{}\n", first.expose()).as_bytes(),
        0o600,
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = assert_cmd::Command::cargo_bin("deploy-kit")
            .unwrap()
            .current_dir(dir.path())
            .args(["secrets"])
            .args(args)
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let mut everything = String::new();
    let (code, text) = run(&["rotate", "--target", "local"]);
    everything += &text;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("stage: new key"), "{text}");
    assert!(
        text.contains("deploy-kit cannot restart the `deploy-kit up local` service"),
        "{text}"
    );
    assert!(
        !text.contains("promote:"),
        "auto stops after a manual roll\n{text}"
    );
    let (code, text) = run(&["status"]);
    everything += &text;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("phase: staged"), "{text}");
    assert!(
        text.contains(&format!("primary: {}", first.fingerprint())),
        "{text}"
    );
    let (code, text) = run(&["rotate", "--phase", "retire"]);
    everything += &text;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("hint: the new key is staged; promote it with `deploy-kit secrets rotate --target local --phase promote`"), "{text}");
    let (code, text) = run(&["rotate", "--phase", "promote"]);
    everything += &text;
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&["rotate", "--phase", "retire"]);
    everything += &text;
    assert_eq!(code, 75, "{text}");
    assert!(
        text.contains("error: too early to retire the old key"),
        "{text}"
    );
    assert!(
        text.contains("hint: run `deploy-kit secrets rotate --target local --phase retire` after "),
        "{text}"
    );
    let (code, text) = run(&["status"]);
    everything += &text;
    assert!(
        code == 0 && text.contains("retire allowed after: "),
        "{text}"
    );
    let (code, text) = run(&["rotate", "--phase", "retire", "--force"]);
    everything += &text;
    assert_eq!(code, 0, "{text}");

    let file_store = FileKeyStore::new(&state_dir);
    let keys = file_store.read().unwrap();
    assert!(keys.pending.is_none() && keys.previous.is_none());
    assert_ne!(keys.primary, first);
    let state = read(&state_dir.join("rotation.json"));
    for value in [&first, &keys.primary] {
        let bare = value.expose().trim_start_matches("hex:");
        assert!(
            !everything.contains(bare),
            "a key value was printed:\n{everything}"
        );
        assert!(
            !state.contains(bare),
            "a key value is in rotation.json:\n{state}"
        );
    }
}
