//! `deploy-kit up` errors that need no cloud: the `pulumi` engine without
//! the `pulumi` CLI, a region typo, and an AWS target in a build without
//! the `aws` feature (`.ci/test` runs this file with `--no-default-features`
//! too).

use assert_cmd::Command;

fn project(engine: &str) -> std::path::PathBuf {
    project_named(engine, engine)
}

/// [`project`] in a directory of its own (tests run in parallel).
fn project_named(label: &str, engine: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("deploy-kit-engines-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deploy-kit.yaml"),
        format!(
            "version: 1\nservice: {{name: vgi, environment: ci, package: kit-service}}\ntargets:\n  lambda: {{platform: aws-lambda-function-url, region: us-east-1, engine: {engine}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("kit-service"), "#!/bin/sh\nexit 0\n").unwrap();
    let zip = deploy_kit::engine::zip::write(&[deploy_kit::engine::zip::ZipEntry {
        name: "bootstrap",
        contents: b"#!/bin/sh\nexit 0\n",
        mode: 0o755,
    }])
    .unwrap();
    std::fs::write(dir.join("package.zip"), zip).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("kit-service"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    dir
}

fn up(dir: &std::path::Path) -> (i32, String) {
    let output = Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(dir)
        .args(["up", "lambda", "--force", "--package", "package.zip"])
        .env("PATH", dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("DEPLOY_KIT_CONFIG")
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn pulumi_engine_without_pulumi_on_path_says_how_to_install_it() {
    let (code, stderr) = up(&project("pulumi"));
    assert_eq!(code, 2, "{stderr}");
    insta::assert_snapshot!(stderr, @r"
    error: engine `pulumi` needs the `pulumi` CLI, which is not on `PATH`
    hint: install the Pulumi CLI (https://www.pulumi.com/docs/install/, e.g. `curl -fsSL https://get.pulumi.com | sh`) and put it on `PATH`, or set `engine: native`
    ");
}

#[cfg(not(feature = "aws"))]
#[test]
fn aws_target_without_the_aws_feature_names_the_rebuild() {
    let (code, stderr) = up(&project("native"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hint: rebuild with `cargo install --path infra --features aws`"),
        "{stderr}"
    );
}

/// A region typo is a config error before anything runs, naming the region
/// meant (`plan` and `up` load the config the same way).
#[test]
fn a_region_typo_is_refused_with_the_region_meant() {
    let dir = project_named("region", "native");
    let config = std::fs::read_to_string(dir.join("deploy-kit.yaml")).unwrap();
    std::fs::write(
        dir.join("deploy-kit.yaml"),
        config.replace("region: us-east-1", "region: us-esat-1"),
    )
    .unwrap();
    let (code, stderr) = up(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "`targets.lambda`: `region: us-esat-1` is not an AWS region; did you mean `us-east-1`?"
        ),
        "{stderr}"
    );
}
