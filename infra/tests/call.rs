//! `deploy-kit call` as a user runs it: the real binary against a real
//! `kit-service` serving the demo protocol (build it first: `cargo build -p
//! kit-service`), exit code, stdout and stderr snapshotted with insta.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

#[path = "common/service.rs"]
mod kit;
use kit::service;

/// Runs `deploy-kit call ARGS` with a clean `DEPLOY_KIT_*` environment plus
/// `env`; returns the exit code and the whole output as one text.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::cargo_bin("deploy-kit").unwrap();
    command.arg("call").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = format!(
        "exit: {code}\n--- stdout\n{stdout}--- stderr\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (code, stdout, text)
}

/// One helper for every case: the exit code must match, and the whole
/// output must match its snapshot.
fn check(name: &str, args: &[&str], env: &[(&str, &str)], expect_exit: i32) {
    let (code, _, text) = run(args, env);
    assert_eq!(code, expect_exit, "{text}");
    insta::with_settings!({filters => vec![
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"\(os error \d+\)", "(os error [N])"),
    ]}, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn lists_protocols_and_methods() {
    let demo = service(&[]);
    check("list", &[&demo.url], &[], 0);
}

#[test]
fn calls_a_unary_method_with_arguments_by_name_or_json() {
    let demo = service(&[]);
    check("add", &[&demo.url, "kit.Demo.v1.add", "a=1", "b=2"], &[], 0);
    check(
        "greet_table",
        &[
            &demo.url,
            "kit.Demo.v1.greet",
            "--json",
            r#"{"name": "ada"}"#,
            "--format",
            "table",
        ],
        &[],
        0,
    );
}

#[test]
fn follows_a_producer_stream() {
    let demo = service(&[]);
    check(
        "count",
        &[&demo.url, "kit.Demo.v1.count", "n=5", "batch_rows=2"],
        &[],
        0,
    );
    check(
        "count_max_batches",
        &[
            &demo.url,
            "kit.Demo.v1.count",
            "n=5",
            "batch_rows=2",
            "--max-batches",
            "1",
            "--format",
            "table",
        ],
        &[],
        0,
    );
}

#[test]
fn mistakes_name_what_is_wrong() {
    let demo = service(&[]);
    check(
        "wrong_type",
        &[&demo.url, "kit.Demo.v1.add", "a=one", "b=2"],
        &[],
        2,
    );
    check(
        "missing_argument",
        &[&demo.url, "kit.Demo.v1.add", "a=1"],
        &[],
        2,
    );
    check(
        "extra_argument",
        &[&demo.url, "kit.Demo.v1.add", "a=1", "b=2", "c=3"],
        &[],
        2,
    );
    check(
        "unknown_method",
        &[&demo.url, "kit.Demo.v1.ad", "a=1"],
        &[],
        2,
    );
    check("unknown_protocol", &[&demo.url, "acme.Calc.v1.add"], &[], 2);
    check(
        "method_error",
        &[&demo.url, "kit.Demo.v1.add", "a=9223372036854775807", "b=1"],
        &[],
        1,
    );
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    check("unreachable", &[&closed], &[], 3);
}

#[test]
fn sends_the_api_key_from_the_flag_or_the_environment() {
    let secured = service(&[
        ("KIT_API_KEYS", "shell=s3cret-shell-key"),
        ("KIT_REQUIRE_AUTH", "true"),
    ]);
    check(
        "no_api_key",
        &[&secured.url, "kit.Demo.v1.add", "a=1", "b=2"],
        &[],
        1,
    );
    let (code, stdout, text) = run(
        &[
            &secured.url,
            "kit.Demo.v1.add",
            "a=1",
            "b=2",
            "--api-key",
            "s3cret-shell-key",
        ],
        &[],
    );
    assert_eq!((code, stdout.as_str()), (0, "{\"result\":3}\n"), "{text}");
    let (code, stdout, text) = run(
        &[&secured.url, "kit.Demo.v1.add", "a=2", "b=2"],
        &[("DEPLOY_KIT_API_KEY", "s3cret-shell-key")],
    );
    assert_eq!((code, stdout.as_str()), (0, "{\"result\":4}\n"), "{text}");
}

#[test]
fn expired_and_out_of_scope_keys_get_hints_of_their_own() {
    let secured = service(&[(
        "KIT_API_KEYS",
        "old=k-old-key;expires=2020-01-01,adder=k-add-key;scopes=kit.Demo.v1/add",
    )]);
    let call = |key: &str, method: &str| {
        run(
            &[&secured.url, method, "--json", "{}", "--api-key", key],
            &[],
        )
    };
    let (code, _, text) = call("k-old-key", "kit.Demo.v1.add");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("`expired_credential`"), "{text}");
    assert!(
        text.contains("hint: the key's `expires` has passed"),
        "{text}"
    );
    // `call` describes first: a key scoped to `add` alone is told what to add.
    let (code, _, text) = call("k-add-key", "kit.Demo.v1.add");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("`insufficient_scope`"), "{text}");
    assert!(
        text.contains("add `vgi_rpc.Reflection.v1/*` to the key's `scopes=`"),
        "{text}"
    );
    assert!(!text.contains("k-add-key"), "{text}");
    let reflecting = service(&[(
        "KIT_API_KEYS",
        "adder=k-add-key;scopes=kit.Demo.v1/add vgi_rpc.Reflection.v1/*",
    )]);
    let in_scope = |method: &str, args: &[&str]| {
        let mut all = vec![reflecting.url.as_str(), method];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api-key", "k-add-key"]);
        run(&all, &[])
    };
    let (code, _, text) = in_scope("kit.Demo.v1.greet", &["name=x"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("hint: the key's `scopes` do not cover"),
        "{text}"
    );
    let (code, stdout, text) = in_scope("kit.Demo.v1.add", &["a=1", "b=2"]);
    assert_eq!((code, stdout.as_str()), (0, "{\"result\":3}\n"), "{text}");
}

#[test]
fn fetches_a_batch_from_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = service(&[
        ("KIT_STORAGE", "local"),
        ("KIT_STORAGE_DIR", dir.path().to_str().unwrap()),
        ("KIT_EXTERNALIZE_THRESHOLD_BYTES", "1024"),
    ]);
    demo.dir = Some(dir);
    let (code, stdout, text) = run(
        &[&demo.url, "kit.Demo.v1.count", "n=500", "batch_rows=500"],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 500, "{text}");
    assert_eq!(lines[499], r#"{"value":499}"#);
    let objects = walk(demo.dir.as_ref().unwrap().path());
    assert!(objects > 0, "the batch did not go through the store");
}

/// Files below `dir`.
fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() { walk(&path) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}
