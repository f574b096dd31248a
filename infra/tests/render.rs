//! `deploy-kit render` and `deploy-kit init`: every rendered file snapshotted
//! with insta, secrets never rendered, strict undefined, and the CLI's exit
//! codes and messages from the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use deploy_kit::config::DeployConfig;
use deploy_kit::render::{self, RenderOptions, RenderedFile};
use kit_checks::platform::Platform;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: &Path) -> DeployConfig {
    DeployConfig::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The platforms `render` has templates for, with their example config.
const EXAMPLES: &[&str] = &[
    "aws-lambda-api-gateway",
    "aws-lambda-function-url",
    "cloud-run",
    "azure-functions",
    "fly",
    "railway",
    "kubernetes",
    "compose",
];

/// One snapshot per rendered file, named `<example>__<path>`.
fn check_snapshots(example: &str, files: &[RenderedFile]) {
    assert!(!files.is_empty(), "{example} rendered nothing");
    for file in files {
        let name = format!(
            "{example}__{}",
            file.path.display().to_string().replace(['/', '.'], "_")
        );
        insta::assert_snapshot!(name, file.contents);
    }
}

#[test]
fn every_example_target_renders_and_matches_its_snapshots() {
    for example in EXAMPLES {
        let config = load(&repo_root().join(format!("examples/{example}.yaml")));
        let options = RenderOptions {
            config_name: format!("{example}.yaml"),
            ..RenderOptions::default()
        };
        let files = render::render_target_with(&config, "production", &options).unwrap();
        check_snapshots(example, &files);
    }
    let config = load(&repo_root().join("deploy-kit.yaml"));
    check_snapshots(
        "deploy-kit",
        &render::render_target(&config, "production").unwrap(),
    );
    check_snapshots(
        "deploy-kit",
        &[render::render_workflow(&config, &RenderOptions::default()).unwrap()],
    );
}

#[test]
fn render_target_files_are_what_plan_writes() {
    let config = load(&repo_root().join("examples/kubernetes.yaml"));
    let paths: Vec<String> = render::render_target(&config, "production")
        .unwrap()
        .iter()
        .map(|file| file.path.display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "Dockerfile",
            "Dockerfile.dockerignore",
            "k8s/deployment.yaml",
            "k8s/service.yaml",
            "k8s/ingress.yaml",
            "k8s/pdb.yaml",
            "k8s/hpa.yaml",
            "k8s/servicemonitor.yaml",
            "Pulumi.yaml",
            "Pulumi.dev.yaml",
        ]
    );
}

const LITERAL_KEY: &str = "literal-signing-key-0123456789abcdef-do-not-render";
const LITERAL_API_KEY_REFERENCE: &str = "k8s:vgi-api-keys";

/// A config with a literal key for `platform`.
fn literal_key_config(platform: Platform) -> DeployConfig {
    let text = format!(
        "version: 1\nservice:\n  name: vgi-demo\n  package: kit-service\ntargets:\n  t:\n    platform: {}\n    instances: 3\n    public: true\n\
         storage:\n  provider: s3\n  bucket: b\n  prefix: vgi-rpc/\n  credential: instance-role\n\
         auth:\n  required: true\n  api_keys: {LITERAL_API_KEY_REFERENCE}\n\
         signing_key:\n  source: literal\n  value: \"{LITERAL_KEY}\"\n",
        platform.name()
    );
    DeployConfig::parse(&text, Path::new("literal.yaml")).unwrap()
}

#[test]
fn a_literal_signing_key_is_never_rendered_only_referenced() {
    for platform in Platform::ALL {
        let config = literal_key_config(*platform);
        let mut files = match render::render_target(&config, "t") {
            Ok(files) => files,
            // Platforms without templates render nothing, so nothing leaks.
            Err(error) => {
                assert_eq!(error.exit_code, 2, "{}", error.message);
                assert!(!error.message.contains(LITERAL_KEY));
                continue;
            }
        };
        files.extend(
            render::render_parts(&config, "t", &RenderOptions::default(), render::What::Nginx)
                .unwrap(),
        );
        files.push(render::render_workflow(&config, &RenderOptions::default()).unwrap());
        for file in &files {
            assert!(
                !file.contents.contains(LITERAL_KEY),
                "{} of {} contains the literal signing key",
                file.path.display(),
                platform.name()
            );
        }
        // The key is referenced as the `<name>-signing-key` secret wherever it travels.
        let all: String = files.iter().map(|f| f.contents.as_str()).collect();
        if !matches!(platform, Platform::Fly | Platform::Railway) {
            assert!(
                all.contains("vgi-demo-signing-key") || all.contains("${signingKey}"),
                "{}: no reference to the signing key secret",
                platform.name()
            );
        }
    }
}

#[test]
fn kubernetes_references_secrets_by_name_with_a_grace_that_covers_the_drain() {
    let config = load(&repo_root().join("examples/kubernetes.yaml"));
    let files = render::render_target(&config, "production").unwrap();
    let deployment = &files
        .iter()
        .find(|f| f.path == Path::new("k8s/deployment.yaml"))
        .unwrap()
        .contents;
    assert!(deployment.contains("secretName: vgi-demo-signing-key"));
    assert!(!deployment.contains("kind: Secret"));
    let shutdown = config.limits.shutdown_grace_seconds;
    let grace = shutdown + 5 + render::TERMINATION_MARGIN_SECONDS;
    assert!(
        deployment.contains(&format!("terminationGracePeriodSeconds: {grace}\n")),
        "{deployment}"
    );
    assert!(deployment.contains("name: KIT_DRAIN_DELAY\n              value: \"5\""));
}

/// `deploy-kit secrets rotate` keeps a rotation's staged or old key in the
/// signing-key Secret's `previous` key; the pods read it, and a Secret
/// without it (outside a rotation) must still start them.
#[test]
fn the_kubernetes_deployment_reads_previous_signing_keys_from_an_optional_secret_key() {
    let config = load(&repo_root().join("examples/kubernetes.yaml"));
    let files = render::render_target(&config, "production").unwrap();
    let deployment = &files
        .iter()
        .find(|f| f.path == Path::new("k8s/deployment.yaml"))
        .unwrap()
        .contents;
    let expected = "            - name: VGI_SIGNING_KEY_PREVIOUS
              valueFrom:
                secretKeyRef:
                  name: vgi-demo-signing-key
                  key: previous
                  optional: true
";
    assert!(deployment.contains(expected), "{deployment}");
    assert_eq!(
        deployment.matches("optional: true").count(),
        1,
        "{deployment}"
    );
    // The primary key stays a mounted file with only `value` projected.
    assert!(
        deployment.contains("name: VGI_SIGNING_KEY_FILE"),
        "{deployment}"
    );
    assert!(
        deployment.contains(
            "secretName: vgi-demo-signing-key\n            items:\n              - key: value\n"
        ),
        "{deployment}"
    );
}

#[test]
fn nginx_limits_follow_the_config_and_take_explicit_upstreams() {
    let config = load(&repo_root().join("deploy-kit.yaml"));
    let options = RenderOptions {
        nginx: render::NginxOptions {
            upstreams: vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()],
            listen: Some("127.0.0.1:8088".into()),
            plain_http: true,
            ..Default::default()
        },
        ..RenderOptions::default()
    };
    let files = render::render_parts(&config, "production", &options, render::What::Nginx).unwrap();
    let nginx = &files[0].contents;
    let body = config.limits.max_request_bytes.unwrap() + render::PROXY_BODY_HEADROOM_BYTES;
    for expected in [
        format!("client_max_body_size {body};"),
        "proxy_read_timeout 300s;".into(),
        "proxy_send_timeout 300s;".into(),
        "server 127.0.0.1:9001 ".into(),
        "server 127.0.0.1:9002 ".into(),
        "listen 127.0.0.1:8088;".into(),
        "proxy_request_buffering off;".into(),
        "proxy_buffering off;".into(),
        "proxy_set_header X-Request-Id $kit_request_id;".into(),
    ] {
        assert!(nginx.contains(&expected), "missing `{expected}`:\n{nginx}");
    }
    assert!(!nginx.contains("ssl_certificate"));
}

#[test]
fn a_missing_variable_names_the_template_line_and_expression() {
    let environment = render::environment(&[(
        "broken/example.j2",
        "# {{ generated_by }}\nname: {{ service.name }}\nregion: {{ target.regoin }}\n",
    )]);
    let config = load(&repo_root().join("deploy-kit.yaml"));
    let settings =
        render::Settings::resolve(&config, "production", &RenderOptions::default()).unwrap();
    let context = minijinja::context! {
        generated_by => "test",
        ..minijinja::Value::from(minijinja::value::Serde(&settings))
    };
    let error = render::render_template(&environment, "broken/example.j2", context).unwrap_err();
    assert_eq!(
        error.message,
        "failed to render `templates/broken/example.j2` line 3: undefined variable `target.regoin`"
    );
    assert!(error.hint.contains("settings"), "{}", error.hint);
    assert_eq!(error.exit_code, 1);
}

/// Runs `deploy-kit` in `dir` with a clean `DEPLOY_KIT_*` environment.
fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::cargo_bin("deploy-kit").unwrap();
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") {
            command.env_remove(name);
        }
    }
    command.env("DEPLOY_KIT_TODAY", "2026-01-10");
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One helper for CLI cases: exit code, then stderr with the temp dir filtered.
fn check_cli(name: &str, dir: &Path, args: &[&str], expect_exit: i32) -> String {
    let (code, stdout, stderr) = run_in(dir, args);
    assert_eq!(code, expect_exit, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let text =
        format!("exit: {code}\n--- stderr\n{stderr}").replace(&dir.display().to_string(), "[DIR]");
    insta::assert_snapshot!(name, text);
    stdout
}

#[test]
fn cli_render_check_is_0_when_fresh_and_1_listing_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("examples/fly.yaml"),
        dir.path().join("deploy-kit.yaml"),
    )
    .unwrap();
    check_cli(
        "cli_check_missing",
        dir.path(),
        &["render", "target", "--check"],
        1,
    );
    check_cli("cli_write", dir.path(), &["render", "target"], 0);
    check_cli(
        "cli_check_fresh",
        dir.path(),
        &["render", "target", "--check"],
        0,
    );
    let fly = dir.path().join(".deploy-kit/dev/production/fly.toml");
    std::fs::write(&fly, "app = \"edited\"\n").unwrap();
    check_cli(
        "cli_check_stale",
        dir.path(),
        &["render", "target", "--check"],
        1,
    );
}

#[test]
fn cli_render_usage_and_config_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    check_cli("cli_no_config", dir.path(), &["render", "target"], 2);
    std::fs::copy(
        repo_root().join("examples/fly.yaml"),
        dir.path().join("deploy-kit.yaml"),
    )
    .unwrap();
    check_cli(
        "cli_unknown_target",
        dir.path(),
        &["render", "target", "--target", "staging"],
        2,
    );
    check_cli("cli_no_k8s_for_fly", dir.path(), &["render", "k8s"], 2);
    let (code, _, stderr) = run_in(dir.path(), &["render", "helm"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid value 'helm'"), "{stderr}");
}

#[test]
fn cli_render_help_lists_every_kind_and_the_exit_codes() {
    let (code, stdout, _) = run_in(&repo_root(), &["render", "--help"]);
    assert_eq!(code, 0);
    for word in [
        "target",
        "dockerfile",
        "pulumi",
        "k8s",
        "compose",
        "nginx",
        "fly",
        "railway",
        "azure",
        "workflow",
        "all",
        "--upstream",
        "--plain-http",
        "--check",
        "Exit codes",
    ] {
        assert!(
            stdout.contains(word),
            "`{word}` missing from --help:\n{stdout}"
        );
    }
}

#[test]
fn init_writes_a_file_per_platform_that_parses_and_passes_the_doctor() {
    let dir = tempfile::tempdir().unwrap();
    // A user's crate: `service.package` is left out, so ART001 finds it with
    // `cargo metadata` (the only package with one bin target).
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"acme-rpc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [[bin]]\nname = \"acme\"\npath = \"src/main.rs\"\n\n\
         [features]\nlambda = []\ns3 = []\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    for platform in Platform::ALL {
        let file = format!("{}.yaml", platform.name());
        let (code, _, stderr) = run_in(
            dir.path(),
            &["init", "--target", platform.name(), "--output", &file],
        );
        assert_eq!(code, 0, "{stderr}");
        let text = std::fs::read_to_string(dir.path().join(&file)).unwrap();
        let config = DeployConfig::parse(&text, Path::new(&file)).unwrap();
        assert_eq!(config.target(None).unwrap().1.platform, *platform);
        let (code, stdout, stderr) = run_in(
            dir.path(),
            &[
                "doctor",
                "--offline",
                "--fail-on",
                "warn",
                "--config",
                &file,
            ],
        );
        assert_eq!(code, 0, "{}:\n{stdout}{stderr}", platform.name());
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["init", "--target", "kubernetes"];
    assert_eq!(run_in(dir.path(), &args).0, 0);
    check_cli("init_exists", dir.path(), &args, 2);
    let (code, _, stderr) = run_in(dir.path(), &["init", "--target", "fly", "--force"]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(dir.path().join("deploy-kit.yaml")).unwrap();
    assert!(text.contains("platform: fly"), "{text}");
}

#[test]
fn init_snapshot_cloud_run() {
    let (code, stdout, stderr) = run_in(
        &repo_root(),
        &["init", "--target", "cloud-run", "--output", "-"],
    );
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("init_cloud_run", stdout);
}

/// Every platform as one target of a crate that is not kit-service.
fn renamed_crate_config() -> String {
    let mut text = String::from(
        "version: 1\n\
         service:\n  name: acme\n  package: acme-rpc\n  binary: acme\n  features: [fast]\n\
         targets:\n",
    );
    for platform in Platform::ALL {
        let region = match platform {
            Platform::CloudRun | Platform::CloudFunctions => "europe-west1",
            Platform::AzureFunctions => "westeurope",
            _ => "eu-west-1",
        };
        text.push_str(&format!(
            "  {name}:\n    platform: {name}\n    instances: 3\n    public: true\n    region: {region}\n    project: acme-project\n",
            name = platform.name()
        ));
    }
    text.push_str(
        "storage:\n  provider: s3\n  bucket: acme-data\n  prefix: acme/\n  credential: instance-role\n\
         auth:\n  required: true\n  api_keys: aws:acme-api-keys\n\
         signing_key:\n  source: secret\n  secret: aws:acme-signing-key\n",
    );
    text
}

/// Every file under `dir`, relative, with its text.
fn rendered_tree(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                files.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_renamed_crate_renders_every_platform_without_kit_service() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-kit.yaml"), renamed_crate_config()).unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) = run_in(
        dir.path(),
        &["render", "all", "--output-dir", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let files = rendered_tree(&out);
    let file = |path: &str| -> &str {
        &files
            .iter()
            .find(|(have, _)| have == path)
            .unwrap_or_else(|| panic!("`{path}` was not rendered"))
            .1
    };
    // Every platform with templates rendered, none names kit-service.
    for platform in Platform::ALL {
        let name = platform.name();
        let rendered = files
            .iter()
            .any(|(path, _)| path.starts_with(&format!("{name}/")));
        let templated = !matches!(
            platform,
            Platform::CloudFunctions | Platform::CloudflareWorkers
        );
        assert_eq!(rendered, templated, "{name}: rendered {rendered}");
    }
    for (path, text) in &files {
        for word in ["kit-service", "kit_service"] {
            assert!(!path.contains(word), "`{path}` names `{word}`");
            if let Some(line) = text.lines().find(|line| line.contains(word)) {
                panic!("`{path}` names `{word}`: {line}");
            }
        }
    }
    // ... and each runs and builds the configured artifact.
    let dockerfile = file("compose/Dockerfile");
    assert!(
        dockerfile
            .contains("cargo build --locked --release -p acme-rpc --bin acme --features fast,s3"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("COPY --from=build /service-binary /usr/local/bin/acme"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/acme"]"#));
    assert!(file("compose/Dockerfile.dockerignore").contains("\ntarget\n"));
    let lambda = file("aws-lambda-function-url/Dockerfile");
    assert!(lambda.contains("--features fast,lambda,s3"), "{lambda}");
    assert!(lambda.contains(r#"CMD ["lambda"]"#), "{lambda}");
    assert!(file("azure-functions/host.json").contains(r#""defaultExecutablePath": "acme""#));
    assert!(
        file("railway/railway.json")
            .contains(r#""startCommand": "/usr/local/bin/acme serve --listen 0.0.0.0:8080""#)
    );
    assert!(file("kubernetes/k8s/deployment.yaml").contains("        - name: acme\n"));
}

#[test]
fn an_unset_package_outside_a_cargo_workspace_is_a_clear_render_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = renamed_crate_config().replace("  package: acme-rpc\n  binary: acme\n", "");
    std::fs::write(dir.path().join("deploy-kit.yaml"), config).unwrap();
    let (code, _, stderr) = run_in(dir.path(), &["render", "target", "--target", "fly"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: `service.package` is not set, and `cargo metadata` could not find it (no `Cargo.toml` at `service.workspace: .`, or no cargo)"),
        "{stderr}"
    );
}
