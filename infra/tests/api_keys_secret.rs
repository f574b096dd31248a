//! `deploy-kit up` on a compose target refuses a malformed API-keys secret
//! by file and key name, before any replica starts (they would exit 64), and
//! never prints a key.

use std::path::Path;

use assert_cmd::cargo::CommandCargoExt;

fn deploy_kit(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut command = std::process::Command::cargo_bin("deploy-kit").unwrap();
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") {
            command.env_remove(name);
        }
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn compose_up_refuses_a_malformed_api_keys_secret_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"acme-rpc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[features]\nlambda = []\ns3 = []\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    let (code, text) = deploy_kit(dir.path(), &["init", "--target", "compose"]);
    assert_eq!(code, 0, "{text}");
    // No object storage: this test is about the keys, not a bucket.
    let config_path = dir.path().join("deploy-kit.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let start = config
        .find("storage:\n  provider")
        .expect("init writes a storage block");
    let end = config[start..]
        .find("\n\n")
        .map_or(config.len(), |i| start + i);
    let config: String = format!("{}{}", &config[..start], &config[end..])
        .lines()
        .filter(|line| {
            ![
                "externalize_threshold_bytes:",
                "max_upload_bytes:",
                "upload_urls:",
            ]
            .iter()
            .any(|key| line.trim_start().starts_with(key))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&config_path, config).unwrap();
    let secrets = dir.path().join(".deploy-kit/dev/production/secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("kit-service-api-keys"),
        "ci=k-ci-s3cret;expires=soon\n",
    )
    .unwrap();
    let (code, text) = deploy_kit(dir.path(), &["up", "production"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(
            "kit-service-api-keys` (`auth.api_keys`): key `ci`: `expires=soon` is not a UTC date"
        ),
        "{text}"
    );
    assert!(text.contains("hint: write one `name=key"), "{text}");
    assert!(!text.contains("k-ci-s3cret"), "{text}");
}
