//! Registry credentials as `docker login` and `podman login` leave them:
//! `$REGISTRY_AUTH_FILE`, then `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`). A `credHelpers` entry for the registry, else
//! `credsStore`, runs `docker-credential-<name> get`; otherwise the
//! `auths` entry's base64 `user:password` is used. No file, no entry: anonymous.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;

/// A user name and password (or token) for HTTP basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The `Authorization: Basic ...` value.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "credential helper `docker-credential-{helper}` for `{registry}` is not on `PATH` (named in `{file}`)"
    )]
    UnknownHelper {
        helper: String,
        registry: String,
        file: PathBuf,
    },
    #[error("credential helper `docker-credential-{helper}` failed for `{registry}`: {message}")]
    HelperFailed {
        helper: String,
        registry: String,
        message: String,
    },
    #[error("failed to read `{file}`: {message}")]
    File { file: PathBuf, message: String },
    #[error("an ECR login to `{registry}` needs a region, and none is set")]
    NoRegion { registry: String },
    #[error("ECR `GetAuthorizationToken` for `{registry}` failed: {message}")]
    Ecr { registry: String, message: String },
    #[error("no Google access token for Artifact Registry `{registry}`: {message}")]
    ArtifactRegistry { registry: String, message: String },
    #[error(
        "the {login} login to `{registry}` needs deploy-kit built with the `{feature}` feature"
    )]
    NeedsFeature {
        registry: String,
        login: &'static str,
        feature: &'static str,
    },
}

/// The auth files in the order they are read.
pub fn auth_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut files = Vec::new();
    if let Some(file) = set("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    match (set("DOCKER_CONFIG"), set("HOME")) {
        (Some(dir), _) => files.push(PathBuf::from(dir).join("config.json")),
        (None, Some(home)) => files.push(PathBuf::from(home).join(".docker/config.json")),
        (None, None) => {}
    }
    files
}

/// The credential for `registry` (`host[:port]`), or `None` for anonymous access.
pub fn lookup(
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, CredentialError> {
    for file in auth_files(env) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(CredentialError::File {
                    file,
                    message: error.to_string(),
                });
            }
        };
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| CredentialError::File {
                file: file.clone(),
                message: error.to_string(),
            })?;
        if let Some(found) = from_config(&config, registry, &file, env)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// `auths` keys may carry a scheme and a path (`https://index.docker.io/v1/`).
fn host_of(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn from_config(
    config: &serde_json::Value,
    registry: &str,
    file: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, CredentialError> {
    let helper = config["credHelpers"]
        .as_object()
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(key, _)| host_of(key) == registry)
                .and_then(|(_, helper)| helper.as_str())
        })
        .or_else(|| config["credsStore"].as_str())
        .filter(|helper| !helper.is_empty());
    if let Some(helper) = helper {
        return run_helper(helper, registry, file, env);
    }
    let Some(entry) = config["auths"].as_object().and_then(|auths| {
        auths
            .iter()
            .find(|(key, _)| host_of(key) == registry)
            .map(|(_, entry)| entry)
    }) else {
        return Ok(None);
    };
    let bad = |message: &str| CredentialError::File {
        file: file.to_path_buf(),
        message: format!("`auths.{registry}`: {message}"),
    };
    if let (Some(username), Some(password)) =
        (entry["username"].as_str(), entry["password"].as_str())
    {
        return Ok(Some(Credential {
            username: username.into(),
            password: password.into(),
        }));
    }
    let Some(auth) = entry["auth"].as_str() else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("`auth` is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad("`auth` is not `user:password`"))?;
    Ok(Some(Credential {
        username: username.into(),
        password: password.into(),
    }))
}

/// Runs `docker-credential-<helper> get` with the registry on stdin, as docker does.
fn run_helper(
    helper: &str,
    registry: &str,
    file: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, CredentialError> {
    let program = format!("docker-credential-{helper}");
    let found = env("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(&program))
        .find(|candidate| candidate.is_file());
    let Some(program_path) = found else {
        return Err(CredentialError::UnknownHelper {
            helper: helper.into(),
            registry: registry.into(),
            file: file.to_path_buf(),
        });
    };
    let failed = |message: String| CredentialError::HelperFailed {
        helper: helper.into(),
        registry: registry.into(),
        message,
    };
    let mut child = Command::new(&program_path)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(error.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|error| failed(error.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(error.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // docker's helpers say this when they hold nothing for the server.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!(
            "{} {}",
            output.status,
            format!("{} {}", stdout.trim(), stderr.trim()).trim()
        )));
    }
    let answer: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|error| failed(format!("unreadable answer ({error})")))?;
    match (answer["Username"].as_str(), answer["Secret"].as_str()) {
        (Some(username), Some(secret)) => Ok(Some(Credential {
            username: username.into(),
            password: secret.into(),
        })),
        _ => Err(failed("the answer has no `Username` and `Secret`".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "deploy-kit-credentials-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn auths_entries_match_by_host_with_or_without_scheme() {
        let dir = dir("auths");
        std::fs::write(
            dir.join("config.json"),
            r#"{"auths": {"https://127.0.0.1:5000/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                         "other.example": {"auth": "eDp5"}}}"#,
        )
        .unwrap();
        let env = env_of(&[("DOCKER_CONFIG", dir.display().to_string())]);
        let found = lookup("127.0.0.1:5000", &env).unwrap().unwrap();
        assert_eq!(found.username, "user");
        assert_eq!(found.password, "pa:ss");
        assert_eq!(lookup("nothing.example", &env).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_helper_answers_on_stdout_and_an_unknown_one_is_named() {
        let dir = dir("helpers");
        let helper = dir.join("docker-credential-kit-test");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":\\\"u-$server\\\",\\\"Secret\\\":\\\"s\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"credHelpers": {"registry.example": "kit-test", "ecr.example": "ecr-login"}}"#,
        )
        .unwrap();
        let env = env_of(&[
            ("DOCKER_CONFIG", dir.display().to_string()),
            ("PATH", dir.display().to_string()),
        ]);
        let found = lookup("registry.example", &env).unwrap().unwrap();
        assert_eq!(found.username, "u-registry.example");
        let error = lookup("ecr.example", &env).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "credential helper `docker-credential-ecr-login` for `ecr.example` is not on `PATH`"
            ),
            "{error}"
        );
        assert_eq!(lookup("anonymous.example", &env).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
