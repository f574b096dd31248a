//! The Azure Functions package: a custom handler (the Functions host runs
//! the service binary and forwards every HTTP request to it), zipped
//! reproducibly ([`crate::engine::zip`]: fixed times, this order):
//!
//! - `host.json`: `customHandler.description.defaultExecutablePath` is the
//!   binary, its `arguments` start `serve`, `enableForwardingHttpRequest`
//!   passes requests through untouched, and `extensions.http.routePrefix`
//!   is empty so paths reach the service as clients sent them;
//! - `rpc/function.json`: one HTTP trigger (anonymous: the service checks
//!   its own keys) on the route `{*path}`, which catches every path;
//! - the binary, mode 0755, under its own name.
//!
//! `host.json` and `function.json` are the rendered templates
//! (`templates/azure/`), so `render`, `build` and the `az` engine ship the
//! same files.

use std::path::{Path, PathBuf};

use kit_checks::platform::Platform;

use super::{BuildError, BuildOptions, BuildRecord};
use crate::CommandError;
use crate::deployment::Deployment;

/// Where `build` writes the package, under the target's output directory
/// (the `az` engine's zip deploy uses the same path).
pub const PACKAGE_FILE: &str = "azure/package.zip";
/// The function's directory in the package, and so its name.
pub const FUNCTION_DIR: &str = "rpc";

/// The rendered `host.json` and `function.json` of `deployment`'s target.
pub fn rendered_files(deployment: &Deployment) -> Result<(String, String), crate::CommandError> {
    let files = crate::render::render_target(&deployment.config, &deployment.target_name)?;
    let file = |name: &str| {
        files
            .iter()
            .find(|file| file.path.file_name().is_some_and(|n| n == name))
            .map(|file| file.contents.clone())
            .ok_or_else(|| {
                crate::CommandError::new(
                    format!("target `{}` rendered no `{name}`", deployment.target_name),
                    "check that the target's platform is `azure-functions`",
                    2,
                )
            })
    };
    Ok((file("host.json")?, file("function.json")?))
}

/// The package `up` deploys to an `azure-functions` target, `None` for any
/// other platform: `package` (`--package`) as given, else what `build`
/// (`up`'s timed `deploy-kit build`, with `kit_service` as the prebuilt
/// binary when given) wrote. The `az` engine deploys exactly this file.
pub fn package_for_up(
    deployment: &Deployment,
    package: Option<&Path>,
    kit_service: Option<&Path>,
    build: impl FnOnce(&BuildOptions) -> Result<BuildRecord, CommandError>,
) -> Result<Option<PathBuf>, CommandError> {
    if deployment.target.platform != Platform::AzureFunctions {
        return Ok(None);
    }
    if let Some(package) = package {
        if !package.is_file() {
            return Err(CommandError::new(
                format!("the package `{}` does not exist", package.display()),
                "pass an existing zip to `--package`, or leave it out and `up` builds one",
                2,
            ));
        }
        return Ok(Some(package.to_path_buf()));
    }
    let options = BuildOptions {
        prebuilt_binaries: kit_service.map(Path::to_path_buf).into_iter().collect(),
    };
    let record = build(&options)?;
    Ok(Some(
        record
            .package
            .expect("an Azure Functions build makes a package")
            .path,
    ))
}

/// The package bytes and their unzipped size.
pub fn package(
    host_json: &str,
    function_json: &str,
    binary_name: &str,
    binary: &[u8],
) -> Result<(Vec<u8>, u64), BuildError> {
    let function_path = format!("{FUNCTION_DIR}/function.json");
    let entries = [
        crate::engine::zip::ZipEntry {
            name: "host.json",
            contents: host_json.as_bytes(),
            mode: 0o644,
        },
        crate::engine::zip::ZipEntry {
            name: &function_path,
            contents: function_json.as_bytes(),
            mode: 0o644,
        },
        crate::engine::zip::ZipEntry {
            name: binary_name,
            contents: binary,
            mode: 0o755,
        },
    ];
    let unzipped = entries.iter().map(|e| e.contents.len() as u64).sum();
    let zip = crate::engine::zip::write(&entries).map_err(|error| BuildError::Io {
        what: "the Azure Functions package".into(),
        message: error.to_string(),
    })?;
    Ok((zip, unzipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_reproducible() {
        let first = package("{}", "{}", "acme", &[7u8; 1000]).unwrap();
        let second = package("{}", "{}", "acme", &[7u8; 1000]).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.1, 1004);
    }
}
