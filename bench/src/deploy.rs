//! `--phases deploy`: how long `deploy-kit up` takes for a user's crate, on
//! the AWS Lambda engine against the loopback stand-ins (moto_server for
//! Secrets Manager, IAM, Lambda, STS; SeaweedFS for S3), which
//! `bash .ci/with-aws` starts and names in `KIT_TEST_MOTO_ENDPOINT` and
//! `KIT_TEST_S3_ENDPOINT`.
//!
//! A crate made by `deploy-kit new` (depending on this checkout by path)
//! goes up three ways, each `up --json` reporting its phases (build, push,
//! provision, smoke; `infra/src/timings.rs`):
//! - **cold**: a fresh `CARGO_TARGET_DIR`, nothing provisioned;
//! - **one-line change**: a string in `src/main.rs` edited, then `up`;
//! - **nothing changed**: `up` again, `--cli-runs`-bounded repeats (at most
//!   5); beside it the number of API writes moto recorded during those runs
//!   (its request recorder), which should be 0.
//!
//! The cross-link needs `cargo-zigbuild` on `PATH` and ziglang
//! (`.ci/with-aws` installs both into the tools venv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kit_service::testing::function_url::FunctionUrl;

use super::Args;

/// The variables of `function`'s alias `live` on moto, plus the loopback
/// stand-ins for AWS's endpoints. Blocking (the front calls it per request).
fn deployed_environment(endpoints: &(String, String), function: &str) -> Vec<(String, String)> {
    let url = format!(
        "{}/2015-03-31/functions/{function}/configuration?Qualifier=live",
        endpoints.0
    );
    // moto picks the service from the credential scope of the signature.
    let configuration = ureq::get(&url)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=0",
        )
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    let mut variables: Vec<(String, String)> = configuration
        .and_then(|c| c["Environment"]["Variables"].as_object().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| value.as_str().map(|v| (name, v.to_string())))
        .collect();
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        variables.push((name.into(), std::env::var(name).unwrap_or_default()));
    }
    variables.push(("AWS_REGION".into(), "us-east-1".into()));
    variables.push(("AWS_ENDPOINT_URL".into(), endpoints.0.clone()));
    variables.push(("KIT_STORAGE_ENDPOINT".into(), endpoints.1.clone()));
    variables.sort();
    variables
}

/// One `up --json`: wall seconds and its phases.
struct Up {
    wall: f64,
    build: f64,
    push: f64,
    provision: f64,
    smoke: f64,
}

fn required(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .with_context(|| {
            format!("`{name}` is not set: run `bash .ci/with-aws kit-bench ... --phases deploy`, which starts moto_server and SeaweedFS")
        })
}

fn config(name: &str, front: &str) -> String {
    format!(
        "version: 1
service: {{name: {name}, environment: bench, package: {name}, binary: {name}, workspace: .}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1, replicas: [\"{front}\"]}}
limits:
  max_request_bytes: 5000000
  max_response_bytes: 5000000
  externalize_threshold_bytes: 2000000
  upload_urls: true
  request_timeout_seconds: 60
storage:
  provider: s3
  bucket: {name}-data
  prefix: vgi-rpc/
  expiry_days: 1
  abort_multipart_days: 1
  credential: assumed-role
  session_seconds: 3600
signing_key:
  source: secret
  secret: aws:{name}/bench/signing-key
"
    )
}

/// Runs `deploy-kit up lambda --json` in `dir`.
fn up(deploy_kit: &str, dir: &Path, target_dir: &Path, endpoints: &(String, String)) -> Result<Up> {
    let started = Instant::now();
    let output = Command::new(deploy_kit)
        .current_dir(dir)
        .args(["up", "lambda", "--json"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("AWS_ENDPOINT_URL", &endpoints.0)
        .env("AWS_ENDPOINT_URL_S3", &endpoints.1)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("DEPLOY_KIT_PROGRESS", "plain")
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_STATE")
        .env_remove("DEPLOY_KIT_KIT_SERVICE")
        .env_remove("DEPLOY_KIT_PACKAGE")
        .output()
        .with_context(|| format!("failed to run `{deploy_kit}`"))?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "`deploy-kit up lambda` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`up --json` printed no JSON document")?;
    let phase = |name: &str| document["phases"][name].as_f64().unwrap_or(f64::NAN);
    Ok(Up {
        wall,
        build: phase("build"),
        push: phase("push"),
        provision: phase("provision"),
        smoke: phase("smoke"),
    })
}

fn row(label: &str, up: &Up) {
    println!(
        "| {label} | {:.1} s | {:.1} s | {:.1} s | {:.2} s | {:.2} s |",
        up.wall, up.build, up.push, up.provision, up.smoke
    );
}

/// moto's request recorder: (start, download) around the unchanged runs.
async fn recorder(client: &reqwest::Client, moto: &str, action: &str) -> Result<String> {
    let url = format!("{moto}/moto-api/recorder/{action}");
    let response = if action == "download-recording" {
        client.get(&url).send().await?
    } else {
        client.post(&url).send().await?
    };
    Ok(response.error_for_status()?.text().await?)
}

/// Whether a recorded request changes something (not a Get/List/Describe
/// query, JSON-protocol target or REST `GET`/`HEAD`).
fn is_write(request: &serde_json::Value) -> bool {
    let body = request["body"].as_str().unwrap_or_default();
    let operation = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action=").map(str::to_string))
        .or_else(|| {
            request["headers"].as_object().and_then(|headers| {
                headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
                    .and_then(|(_, value)| value.as_str())
                    .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
            })
        })
        .unwrap_or_else(|| format!("{} ", request["method"].as_str().unwrap_or_default()));
    !["Get", "List", "Describe", "GET ", "HEAD "]
        .iter()
        .any(|read| operation.starts_with(read))
}

pub async fn deploy(args: &Args) -> Result<()> {
    let Some(deploy_kit) = &args.deploy_kit else {
        bail!("`--phases deploy` needs `--deploy-kit PATH` (built with `--features aws`)");
    };
    let endpoints = (
        required("KIT_TEST_MOTO_ENDPOINT")?,
        required("KIT_TEST_S3_ENDPOINT")?,
    );
    let zigbuild = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("cargo-zigbuild").is_file())
    });
    if !zigbuild {
        bail!(
            "`cargo-zigbuild` is not on PATH: the Lambda build cross-links with it and ziglang (pip install cargo-zigbuild ziglang)"
        );
    }
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = std::env::temp_dir().join(format!("kit-bench-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let name = format!("benchup{}", std::process::id() % 100_000);
    let crate_dir = work.join(&name);
    let status = Command::new(deploy_kit)
        .args(["new", &name, "--dir"])
        .arg(&crate_dir)
        .arg("--kit-path")
        .arg(&checkout)
        .status()?;
    if !status.success() {
        bail!("`deploy-kit new` failed ({status})");
    }
    let target_dir: PathBuf = work.join("target");
    // The smoke test at the end of each `up` calls the binary `up` built
    // (what the zip's `bootstrap` runs) behind a loopback Function URL,
    // started with the variables moto holds for the function's alias.
    let binary = target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join(&name);
    let function = format!("{name}-bench");
    let stand_ins = endpoints.clone();
    let front = FunctionUrl::start(
        binary,
        Box::new(move || deployed_environment(&stand_ins, &function)),
    )
    .await;
    std::fs::write(
        crate_dir.join("deploy-kit.yaml"),
        config(&name, front.url()),
    )?;

    println!("\n## Deploy time (`deploy-kit up lambda`, moto + SeaweedFS on loopback)\n");
    println!("| run | wall | build | push | provision | smoke |");
    println!("|---|---|---|---|---|---|");
    let cold = up(deploy_kit, &crate_dir, &target_dir, &endpoints)?;
    row("cold (empty target dir, nothing provisioned)", &cold);

    let main = crate_dir.join("src/main.rs");
    let source = std::fs::read_to_string(&main)?;
    let Some(edited) = replace_first_string_literal(&source) else {
        bail!("no string literal to change in `{}`", main.display());
    };
    std::fs::write(&main, edited)?;
    let changed = up(deploy_kit, &crate_dir, &target_dir, &endpoints)?;
    row("after a one-line change in src/main.rs", &changed);

    let client = reqwest::Client::new();
    recorder(&client, &endpoints.0, "start-recording").await?;
    let runs = args.cli_runs.clamp(1, 5);
    let mut unchanged = Vec::new();
    for _ in 0..runs {
        unchanged.push(up(deploy_kit, &crate_dir, &target_dir, &endpoints)?);
    }
    let recording = recorder(&client, &endpoints.0, "download-recording").await?;
    recorder(&client, &endpoints.0, "stop-recording").await?;
    let requests: Vec<serde_json::Value> = recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r.to_string().contains(&name))
        .collect();
    let writes = requests.iter().filter(|r| is_write(r)).count();
    unchanged.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    let median = &unchanged[unchanged.len() / 2];
    row(
        &format!(
            "nothing changed (median of {runs}; {} API requests, {writes} writes)",
            requests.len()
        ),
        median,
    );
    let _ = Command::new(deploy_kit)
        .current_dir(&crate_dir)
        .args(["down", "lambda", "--yes", "--delete-data"])
        .env("AWS_ENDPOINT_URL", &endpoints.0)
        .env("AWS_ENDPOINT_URL_S3", &endpoints.1)
        .env("AWS_REGION", "us-east-1")
        .output();
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// `src/main.rs` with the scaffold's greeting (else its first string
/// literal) changed: a one-line edit that changes the binary, not the
/// protocol.
fn replace_first_string_literal(source: &str) -> Option<String> {
    let start = source.find("\"hello, ").or_else(|| source.find('"'))?;
    let end = start + 1 + source[start + 1..].find('"')?;
    Some(format!(
        "{}\"{} (edited)\"{}",
        &source[..start],
        &source[start + 1..end],
        &source[end + 1..]
    ))
}
