//! The CLI-driven engines: `kubernetes` through `kubectl`, `fly` through
//! `fly`/`flyctl`, `railway` through `railway`, and `azure-functions` through
//! `az`. These platforms are driven with the official CLI their users already
//! have installed and logged in, so deploy-kit needs no SDK, no token of its
//! own, and no cargo feature for them (see `docs/platforms.md`).
//!
//! What they share lives here: finding the CLI on `PATH` (with the install
//! hint when it is missing), running one step with the secret on **stdin
//! only**, generating the signing key, and the `up`/`down` drivers around the
//! [`Engine`] API (render, state after each resource, stale resources,
//! `doctor --online`).
//!
//! Invariants:
//! - a secret value is only ever written to a child's stdin; [`Cli::run`]
//!   takes argv and stdin separately, and argv is what progress and errors
//!   show;
//! - output that may hold secret values (`railway variables --json`) is
//!   captured, parsed for names and dropped, never echoed;
//! - the signing key is made once: each engine looks for it by name first
//!   and never overwrites it. `up` never reads it back and it is never kept
//!   on local disk; only `secrets rotate` on Kubernetes reads the Secret
//!   (captured, never shown) to replace it (`crate::secrets::kubernetes`).

pub mod azure;
pub mod fly;
pub mod kubernetes;
pub mod railway;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kit_checks::platform::Platform;

use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::{Engine, Resource, State};

/// Resource output: `true` when `up` created it (so `down` may delete it),
/// `false` when it already existed and was adopted.
pub const CREATED: &str = "created";
/// Resource setting: the SHA-256 of the rendered file it was applied from.
pub const FILE_SHA256: &str = "file.sha256";

/// True for the platforms a CLI engine provisions.
pub fn handles(platform: Platform) -> bool {
    matches!(
        platform,
        Platform::Kubernetes | Platform::Fly | Platform::Railway | Platform::AzureFunctions
    )
}

/// One CLI: the program names to look for and how to install it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Program names, in preference order (`fly`, then `flyctl`).
    pub programs: &'static [&'static str],
    pub install_hint: &'static str,
}

pub const KUBECTL: Tool = Tool {
    programs: &["kubectl"],
    install_hint: "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on `PATH`",
};
pub const FLY: Tool = Tool {
    programs: &["fly", "flyctl"],
    install_hint: "install flyctl with `curl -L https://fly.io/install.sh | sh` (https://fly.io/docs/flyctl/install/) and put it on `PATH`",
};
pub const RAILWAY: Tool = Tool {
    programs: &["railway"],
    install_hint: "install the Railway CLI 4.20 or later with `npm install -g @railway/cli` (https://docs.railway.com/guides/cli) and put it on `PATH`",
};
pub const AZ: Tool = Tool {
    programs: &["az"],
    install_hint: "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli, e.g. `curl -sL https://aka.ms/InstallAzureCLIDeb | sudo bash`) and put it on `PATH`",
};

/// The tool that drives `platform`.
pub fn tool_for(platform: Platform) -> Tool {
    match platform {
        Platform::Fly => FLY,
        Platform::Railway => RAILWAY,
        Platform::AzureFunctions => AZ,
        _ => KUBECTL,
    }
}

/// The engine name recorded in the state file.
pub fn engine_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Fly => "fly",
        Platform::Railway => "railway",
        Platform::AzureFunctions => "azure",
        _ => "kubernetes",
    }
}

/// Finds `tool` on `path_var`, or an error (exit 2) with the install hint.
pub fn find(tool: Tool, path_var: Option<&OsStr>) -> Result<PathBuf, CommandError> {
    let directories: Vec<PathBuf> = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .collect();
    for program in tool.programs {
        let name = format!("{program}{}", std::env::consts::EXE_SUFFIX);
        if let Some(found) = directories
            .iter()
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
        {
            return Ok(found);
        }
    }
    Err(CommandError::new(
        format!("`{}` is not on `PATH`", tool.programs.join("` or `")),
        tool.install_hint,
        2,
    ))
}

/// A found CLI and the directory its commands run in.
#[derive(Debug, Clone)]
pub struct Cli {
    pub program: PathBuf,
    /// The name commands are shown with (`kubectl`, not its full path).
    pub shown_name: String,
    pub working_dir: PathBuf,
}

/// What a finished step printed (stdout only when captured).
#[derive(Debug, Default)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub status: String,
}

impl Cli {
    pub fn new(program: PathBuf, working_dir: &Path) -> Cli {
        let shown_name = program
            .file_stem()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cli".into());
        Cli {
            program,
            shown_name,
            working_dir: working_dir.to_path_buf(),
        }
    }

    /// `kubectl get ...`: how a step is shown. Argv never holds a secret.
    pub fn shown(&self, args: &[OsString]) -> String {
        let mut shown = self.shown_name.clone();
        for arg in args {
            shown.push(' ');
            shown.push_str(&arg.to_string_lossy());
        }
        shown
    }

    /// Runs one command. `stdin` is the only way a secret reaches the CLI.
    /// With `capture`, stdout is returned (and not shown); otherwise it goes
    /// to our stderr, beside the CLI's own stderr, so long steps show their
    /// progress and our stdout stays for the doctor's report.
    pub fn run(
        &self,
        args: &[OsString],
        stdin: Option<&[u8]>,
        capture: bool,
    ) -> Result<Output, CommandError> {
        let mut command = Command::new(&self.program);
        command.args(args).current_dir(&self.working_dir);
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if capture {
            command.stdout(Stdio::piped());
            // A failed probe (`get` of something missing) is expected; its
            // message is not shown.
            command.stderr(Stdio::piped());
        } else {
            command.stdout(stderr_as_stdio());
        }
        let failed = |detail: String| {
            CommandError::new(
                format!("failed to run `{}`: {detail}", self.shown(args)),
                format!("check that `{}` runs", self.program.display()),
                1,
            )
        };
        let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
        if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(bytes).map_err(|e| failed(e.to_string()))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| failed(e.to_string()))?;
        Ok(Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            status: output.status.to_string(),
        })
    }

    /// Runs a step that must succeed; on failure the error names the
    /// command and carries `hint`.
    pub fn must(
        &self,
        args: &[OsString],
        stdin: Option<&[u8]>,
        capture: bool,
        hint: &str,
    ) -> Result<String, CommandError> {
        let output = self.run(args, stdin, capture)?;
        if output.success {
            Ok(output.stdout)
        } else {
            Err(CommandError::new(
                format!("`{}` failed ({})", self.shown(args), output.status),
                hint,
                1,
            ))
        }
    }
}

/// Our stderr as a child's stdout, falling back to inheriting.
fn stderr_as_stdio() -> Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            return Stdio::from(fd);
        }
    }
    Stdio::inherit()
}

/// argv from string-likes.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items
        .into_iter()
        .map(|s| s.as_ref().to_os_string())
        .collect()
}

/// A fresh signing key: `hex:` and 64 hex digits (32 bytes from the OS CSPRNG).
pub fn new_signing_key() -> Result<String, CommandError> {
    let mut bytes = [0u8; crate::engine::aws::KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| {
        CommandError::new(
            format!("failed to generate the signing key: {e}"),
            "the system's random source failed; try again",
            1,
        )
    })?;
    Ok(format!(
        "hex:{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Lower-case hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a previous state recorded `kind/name` as created by `up`.
pub fn created_before(previous: Option<&State>, kind: &str, name: &str) -> bool {
    previous
        .and_then(|state| state.find(kind, name))
        .and_then(|resource| resource.outputs.get(CREATED))
        .is_some_and(|created| created == "true")
}

/// `resource` with `created` recorded, keeping an earlier `true`.
pub fn mark_created(mut resource: Resource, created_now: bool, before: bool) -> Resource {
    resource
        .outputs
        .insert(CREATED.to_string(), (created_now || before).to_string());
    resource
}

/// The target's CLI on `PATH`, run in the config file's directory.
pub fn cli_for(deployment: &Deployment) -> Result<Cli, CommandError> {
    let program = find(
        tool_for(deployment.target.platform),
        std::env::var_os("PATH").as_deref(),
    )?;
    let working_dir = deployment
        .config_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Cli::new(program, &working_dir))
}

/// The engine for a deployment's platform. `previous` is the recorded state
/// (engines use it to remember what they created); `package` is the Azure
/// Functions zip `up` built (or was given), deployed as it is.
pub fn engine_for(
    deployment: &Deployment,
    previous: Option<State>,
    package: Option<&Path>,
    owner: Option<crate::engine::owner::Owner>,
) -> Result<Box<dyn Engine>, CommandError> {
    let cli = cli_for(deployment)?;
    Ok(match deployment.target.platform {
        Platform::Fly => Box::new(fly::FlyEngine::new(deployment, cli, previous)?),
        Platform::Railway => Box::new(railway::RailwayEngine::new(deployment, cli)?),
        Platform::AzureFunctions => Box::new(
            azure::AzureEngine::new(deployment, cli, previous, package.map(Path::to_path_buf))?
                .owned_by(owner.clone()),
        ),
        _ => Box::new(kubernetes::KubernetesEngine::new(deployment, cli)?.owned_by(owner)),
    })
}

/// Fails with the install hint when the target's CLI is not on `PATH`;
/// `up` checks it before building anything.
pub fn require_cli(deployment: &Deployment) -> Result<PathBuf, CommandError> {
    find(
        tool_for(deployment.target.platform),
        std::env::var_os("PATH").as_deref(),
    )
}

/// The desired resources of a CLI target, without running any CLI (`plan`).
pub fn desired(deployment: &Deployment) -> Result<Vec<Resource>, CommandError> {
    match deployment.target.platform {
        Platform::Fly => fly::desired(deployment),
        Platform::Railway => railway::desired(deployment),
        Platform::AzureFunctions => azure::desired(deployment),
        _ => kubernetes::desired(deployment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cli_names_every_program_and_the_install_step() {
        let empty = std::env::temp_dir().join(format!("deploy-kit-no-cli-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let error = find(FLY, Some(empty.as_os_str())).unwrap_err();
        assert_eq!(error.message, "`fly` or `flyctl` is not on `PATH`");
        assert!(error.hint.contains("fly.io/install.sh"), "{}", error.hint);
        assert_eq!(error.exit_code, 2);
        assert!(find(KUBECTL, None).is_err());
    }

    #[test]
    fn signing_keys_are_32_random_bytes_in_hex() {
        let key = new_signing_key().unwrap();
        assert_eq!(key.len(), 4 + 64);
        assert!(key.starts_with("hex:"));
        assert_ne!(key, new_signing_key().unwrap());
    }
}
