//! The Linux build of the service binary: `cargo zigbuild --release` for
//! `<arch>-unknown-linux-gnu.2.34`, so the binary links against glibc 2.34
//! symbols at most (Lambda's `provided.al2023`; any newer glibc in a base
//! image runs it too). One build serves the Lambda zip and the image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::BuildError;
use super::elf::GlibcVersion;
use crate::artifact::{Artifact, Workspace};
use crate::config::Architecture;

/// The cargo binary: `CARGO`, else `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "cargo".into())
}

/// `x86_64-unknown-linux-gnu.2.34`: the Rust target with zig's glibc suffix.
pub fn zig_target(architecture: Architecture) -> String {
    format!("{}.{}", architecture.rust_target(), GlibcVersion::LAMBDA)
}

/// The command line, for messages and hints.
pub fn command_line(
    artifact: &Artifact,
    features: &[String],
    architecture: Architecture,
) -> String {
    let mut args = artifact.build_args(features, true);
    args[0] = "zigbuild".into();
    args.extend(["--target".into(), zig_target(architecture)]);
    format!("cargo {}", args.join(" "))
}

/// Fails with the `rustup target add` hint when the toolchain that builds
/// in `workspace` has no standard library for `architecture`.
pub fn check_rust_target(workspace: &Path, architecture: Architecture) -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC")
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| BuildError::Tool {
            tool: rustc.to_string_lossy().into_owned(),
            message: error.to_string(),
        })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target = architecture.rust_target();
    if !sysroot
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
    {
        return Err(BuildError::MissingRustTarget {
            target: target.to_string(),
            architecture: architecture.name().to_string(),
        });
    }
    Ok(())
}

/// Fails with the install hint when `cargo zigbuild` (or zig) is missing.
pub fn check_zigbuild(workspace: &Path) -> Result<(), BuildError> {
    let missing = |message: String| BuildError::NoZigbuild { message };
    // `cargo zigbuild --version` is cargo build's, so ask the binary itself.
    let output = Command::new("cargo-zigbuild")
        .arg("--version")
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| missing(error.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(missing(
            stderr
                .lines()
                .next()
                .unwrap_or("`cargo-zigbuild --version` failed")
                .to_string(),
        ));
    }
    Ok(())
}

/// Builds the binary (cargo's output on stderr as it comes) and returns its path.
pub fn compile(
    artifact: &Artifact,
    workspace: &Workspace,
    features: &[String],
    architecture: Architecture,
) -> Result<PathBuf, BuildError> {
    check_rust_target(&workspace.root, architecture)?;
    check_zigbuild(&workspace.root)?;
    let mut args = artifact.build_args(features, true);
    args[0] = "zigbuild".into();
    args.extend(["--target".into(), zig_target(architecture)]);
    let status = Command::new(cargo())
        .args(&args)
        .current_dir(&workspace.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|error| BuildError::Tool {
            tool: "cargo".into(),
            message: error.to_string(),
        })?;
    if !status.success() {
        return Err(BuildError::Compile {
            command: format!("cargo {}", args.join(" ")),
            status: status.to_string(),
        });
    }
    Ok(workspace
        .target_directory
        .join(architecture.rust_target())
        .join("release")
        .join(&artifact.binary))
}
