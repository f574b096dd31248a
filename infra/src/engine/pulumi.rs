//! The `pulumi` engine: runs the user's installed `pulumi` CLI on the
//! rendered program in the target's output directory. The stack is the
//! service's environment; the signing key is generated once and handed to
//! `pulumi config set --secret` on stdin, never on the command line.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::CommandError;
use crate::deployment::Deployment;

/// The Pulumi config key holding the signing key (a Pulumi secret).
pub const KEY_CONFIG: &str = "signingKey";
const INSTALL_HINT: &str = "install the Pulumi CLI (https://www.pulumi.com/docs/install/, e.g. `curl -fsSL https://get.pulumi.com | sh`) and put it on `PATH`, or set `engine: native`";

/// `pulumi` on `path_var`, or an error with the install hint.
pub fn find_pulumi(path_var: Option<&OsStr>) -> Result<PathBuf, CommandError> {
    let name = format!("pulumi{}", std::env::consts::EXE_SUFFIX);
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            CommandError::new(
                "engine `pulumi` needs the `pulumi` CLI, which is not on `PATH`",
                INSTALL_HINT,
                2,
            )
        })
}

fn run(pulumi: &Path, dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<(), CommandError> {
    let mut command = Command::new(pulumi);
    command.args(args).arg("--cwd").arg(dir);
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let shown = format!("pulumi {}", args.join(" "));
    let failed = |detail: String| {
        CommandError::new(
            format!("`{shown}` in `{}` failed: {detail}", dir.display()),
            "read Pulumi's output above; `pulumi login` may be needed first",
            1,
        )
    };
    let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(status.to_string()))
    }
}

/// Renders, selects (or creates) the stack, sets the key once, `pulumi up --yes`.
pub fn up(deployment: &Deployment) -> Result<u8, CommandError> {
    let pulumi = find_pulumi(std::env::var_os("PATH").as_deref())?;
    deployment.render().map_err(|error| {
        CommandError::new(
            format!(
                "engine `pulumi` deploys the rendered program: {}",
                error.message
            ),
            "run `deploy-kit render` to see what fails, or set `engine: native`",
            1,
        )
    })?;
    let dir = &deployment.output_dir;
    let stack = &deployment.config.service.environment;
    run(&pulumi, dir, &["stack", "select", "--create", stack], None)?;
    // `config get` prints the value: captured and dropped, only its status matters.
    let has_key = Command::new(&pulumi)
        .args(["config", "get", KEY_CONFIG, "--cwd"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_key {
        let mut bytes = [0u8; crate::engine::aws::KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            CommandError::new(
                format!("failed to generate the signing key: {e}"),
                "the system's random source failed; try again",
                1,
            )
        })?;
        let key = format!(
            "hex:{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        run(
            &pulumi,
            dir,
            &["config", "set", "--secret", KEY_CONFIG],
            Some(&key),
        )?;
    }
    run(&pulumi, dir, &["up", "--yes"], None)?;
    Ok(0)
}

/// `pulumi destroy --yes` on the target's stack.
pub fn down(deployment: &Deployment) -> Result<u8, CommandError> {
    let pulumi = find_pulumi(std::env::var_os("PATH").as_deref())?;
    let dir = &deployment.output_dir;
    run(
        &pulumi,
        dir,
        &["stack", "select", &deployment.config.service.environment],
        None,
    )?;
    run(&pulumi, dir, &["destroy", "--yes"], None)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pulumi_names_the_install_step() {
        let empty = std::env::temp_dir();
        let error = find_pulumi(Some(empty.as_os_str())).unwrap_err();
        assert!(error.message.contains("not on `PATH`"), "{}", error.message);
        assert!(error.hint.contains("get.pulumi.com"), "{}", error.hint);
        assert!(find_pulumi(None).is_err());
    }
}
