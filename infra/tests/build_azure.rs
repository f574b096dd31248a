//! `deploy-kit build --target <azure-functions target>`: the custom-handler
//! zip, read back entry by entry (Python's `zipfile`, not deploy-kit's
//! code): `host.json` runs the binary with `serve` and forwards HTTP
//! requests, `rpc/function.json` is one HTTP trigger catching every route,
//! the binary is there byte for byte and executable, and a second build
//! gives the same bytes. The binary is a C program built here with `cc`
//! (glibc, x86_64), passed as a prebuilt artifact; no servers are needed.

#[path = "common/json.rs"]
mod json;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_deploy-kit"))
        .current_dir(dir)
        .args(args)
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_KIT_SERVICE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The zip's entries as Python's `zipfile` reads them: name, unix mode, bytes (hex).
fn entries(zip: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(json.dumps([[i.filename, i.external_attr >> 16 & 0o777, z.read(i).hex()] for i in z.infolist()]))",
            zip.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let listed: Vec<(String, u32, String)> = serde_json::from_slice(&output.stdout).unwrap();
    listed
        .into_iter()
        .map(|(name, mode, hex)| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (name, mode, bytes)
        })
        .collect()
}

#[test]
fn azure_functions_build_makes_a_reproducible_custom_handler_zip() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploy-kit.yaml"),
        "version: 1
service: {name: sensor-rpc, environment: ci, package: sensor-rpc}
targets:
  func: {platform: azure-functions, region: westeurope}
limits:
  request_timeout_seconds: 120
",
    )
    .unwrap();
    let source = dir.path().join("hello.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let binary = dir.path().join("sensor-rpc");
    let cc = Command::new("cc")
        .args([
            "-O1",
            "-o",
            binary.to_str().unwrap(),
            source.to_str().unwrap(),
        ])
        .output()
        .expect("cc runs");
    assert!(cc.status.success(), "{cc:?}");
    let build = || {
        let (code, stdout, stderr) = run(
            dir.path(),
            &[
                "build",
                "--target",
                "func",
                "--json",
                "--kit-service",
                binary.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert!(stderr.contains("zip deploy"), "{stderr}");
        json::validated(&stdout)
    };
    let record = build();
    assert_eq!(record["kind"], "azure-functions-zip");
    assert!(record["package"].get("upload").is_none(), "{record}");
    let path = record["package"]["path"].as_str().unwrap().to_string();
    assert!(
        path.ends_with(".deploy-kit/ci/func/azure/package.zip"),
        "{path}"
    );
    let first = std::fs::read(&path).unwrap();

    let listed = entries(Path::new(&path));
    let names: Vec<&str> = listed.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["host.json", "rpc/function.json", "sensor-rpc"]);
    let (_, binary_mode, binary_bytes) = &listed[2];
    assert_eq!(*binary_mode, 0o755);
    assert_eq!(binary_bytes, &std::fs::read(&binary).unwrap());

    let host: Value = serde_json::from_slice(&listed[0].2).unwrap();
    assert_eq!(host["version"], "2.0");
    let handler = &host["customHandler"];
    assert_eq!(
        handler["description"]["defaultExecutablePath"],
        "sensor-rpc"
    );
    assert_eq!(handler["description"]["arguments"][0], "serve", "{host}");
    assert_eq!(handler["enableForwardingHttpRequest"], true);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "");
    assert_eq!(host["functionTimeout"], "00:03:00", "{host}");

    let function: Value = serde_json::from_slice(&listed[1].2).unwrap();
    let bindings = function["bindings"].as_array().unwrap();
    let trigger = bindings
        .iter()
        .find(|b| b["direction"] == "in")
        .expect("an input binding");
    assert_eq!(trigger["type"], "httpTrigger");
    assert_eq!(trigger["route"], "{*path}");
    assert_eq!(trigger["authLevel"], "anonymous");
    for method in ["get", "post"] {
        assert!(
            trigger["methods"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == method),
            "{trigger}"
        );
    }
    assert!(
        bindings
            .iter()
            .any(|b| b["type"] == "http" && b["direction"] == "out"),
        "{function}"
    );

    // The same inputs: the same bytes.
    let second = build();
    assert_eq!(second["package"]["sha256"], record["package"]["sha256"]);
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

/// `architecture: arm64` compiles for `aarch64-unknown-linux-gnu`, and a
/// toolchain without that standard library is refused before anything
/// compiles, naming the `rustup` command. The toolchain is made to lack it
/// whatever this machine has: `RUSTC` is a wrapper whose `--print sysroot`
/// is an empty directory (every other call goes to the real rustc).
#[cfg(unix)]
#[test]
fn arm64_without_the_aarch64_target_names_rustup_target_add() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::write(
        dir.path().join("deploy-kit.yaml"),
        format!(
            "version: 1
service: {{name: sensor-rpc, environment: ci, package: sensor-rpc, binary: sensor-rpc, workspace: {}}}
targets:
  func-arm: {{platform: azure-functions, region: westeurope, architecture: arm64}}
",
            root.display()
        ),
    )
    .unwrap();
    let sysroot = dir.path().join("empty-sysroot");
    std::fs::create_dir_all(&sysroot).unwrap();
    let rustc = dir.path().join("rustc");
    std::fs::write(
        &rustc,
        format!(
            "#!/bin/sh\nif [ \"$1 $2\" = \"--print sysroot\" ]; then echo {}; exit 0; fi\nexec rustc \"$@\"\n",
            sysroot.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_deploy-kit"))
        .current_dir(dir.path())
        .args(["build", "--target", "func-arm"])
        .env("RUSTC", &rustc)
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_KIT_SERVICE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: the Rust target `aarch64-unknown-linux-gnu` is not installed, and target architecture `arm64` needs it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: run `rustup target add aarch64-unknown-linux-gnu`"),
        "{stderr}"
    );
    assert!(
        !dir.path()
            .join(".deploy-kit")
            .join("ci")
            .join("func-arm")
            .join("build.json")
            .exists()
    );
}
