//! `build.engine: docker`: the image made and pushed by the Docker CLI, for
//! users whose registry login, builder or policy lives in Docker.
//!
//! The binary is still compiled and checked by deploy-kit (glibc 2.34, the
//! target's architecture), so what ships passed the same checks as with the
//! native engine. The build context is `.deploy-kit/<env>/<target>/docker-build/`:
//! the rendered `Dockerfile` (`templates/docker/Dockerfile.prebuilt.j2`:
//! `FROM service.base_image`, the binary, user 65532, env, port, labels) and
//! `<arch>/<binary>` per architecture. Then, by what the CLI has:
//!
//! - `docker buildx`: `buildx build --platform linux/<arch>[,...] --push
//!   --metadata-file F`; the pushed digest is `containerimage.digest` in `F`
//!   (an image index when there are several architectures);
//! - podman (`DOCKER=podman`): `build` then `push --digestfile F`;
//! - docker without buildx: `build` then `push`, whose `digest: sha256:...`
//!   line is the pushed digest.
//!
//! Invariants: nothing is recorded unless the CLI pushed and its digest was
//! read back; the engine deploys that digest, never the tag.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::registry::{PushStats, Reference, Transport};
use super::{BuildError, ImageRecord};
use crate::config::Architecture;
use crate::deployment::Deployment;

/// The Dockerfile template, by its path under `templates/`.
pub const TEMPLATE: &str = "docker/Dockerfile.prebuilt.j2";
const TEMPLATE_SOURCE: &str = include_str!("../../../templates/docker/Dockerfile.prebuilt.j2");
/// The build context, under the target's output directory.
pub const CONTEXT_DIR: &str = "docker-build";
/// Lines of the CLI's output kept in an error.
const OUTPUT_LINES: usize = 60;

/// What the docker CLI can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `docker buildx build --push --metadata-file`.
    Buildx,
    /// `docker build` then `docker push` (no buildx plugin).
    Classic,
    /// `podman build` then `podman push --digestfile`.
    Podman,
}

/// The docker CLI `build.engine: docker` runs.
#[derive(Debug, Clone)]
pub struct DockerCli {
    pub program: PathBuf,
    /// How it was asked for (`DOCKER`'s value, or `docker`).
    pub name: String,
    pub flavor: Flavor,
}

impl DockerCli {
    /// `DOCKER` (a path, or a name looked up on `PATH`), else `docker` on
    /// `PATH`; then what it can do.
    pub fn find(env: &dyn Fn(&str) -> Option<String>) -> Result<DockerCli, BuildError> {
        let name = env("DOCKER")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "docker".into());
        let program =
            locate(&name, env("PATH").as_deref()).ok_or_else(|| BuildError::NoDocker {
                program: name.clone(),
                message: if name.contains('/') {
                    "does not exist".into()
                } else {
                    "is not on `PATH`".into()
                },
            })?;
        let version = Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| BuildError::NoDocker {
                program: name.clone(),
                message: format!("does not run: {error}"),
            })?;
        let flavor = if String::from_utf8_lossy(&version.stdout)
            .to_ascii_lowercase()
            .contains("podman")
        {
            Flavor::Podman
        } else if Command::new(&program)
            .args(["buildx", "version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
        {
            Flavor::Buildx
        } else {
            Flavor::Classic
        };
        Ok(DockerCli {
            program,
            name,
            flavor,
        })
    }

    fn shown(&self, args: &[String]) -> String {
        format!("{} {}", self.name, args.join(" "))
    }

    /// Runs one command, its output captured; a failure carries the output.
    fn run(&self, args: &[String]) -> Result<String, BuildError> {
        let command = self.shown(args);
        eprintln!("build: {command}");
        let output = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| BuildError::DockerFailed {
                command: command.clone(),
                status: "did not start".into(),
                output: error.to_string(),
            })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(BuildError::DockerFailed {
                command,
                status: output.status.to_string(),
                output: last_lines(&text, OUTPUT_LINES),
            });
        }
        Ok(text)
    }
}

/// `name` as a path when it has a `/`, else the first match on `path_var`.
fn locate(name: &str, path_var: Option<&str>) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// One architecture's checked binary.
pub struct DockerBinary<'a> {
    pub architecture: Architecture,
    pub bytes: &'a [u8],
    pub sha256: &'a str,
}

/// The rendered Dockerfile.
pub fn dockerfile(
    target: &str,
    base: &str,
    binary: &str,
    labels: &[(String, String)],
) -> Result<String, crate::CommandError> {
    let environment = crate::render::environment(&[(TEMPLATE, TEMPLATE_SOURCE)]);
    crate::render::render_template(
        &environment,
        TEMPLATE,
        minijinja::context! {
            generated_by => format!("Generated by `deploy-kit build` from templates/{TEMPLATE} (`build.engine: docker`)."),
            do_not_edit => "Do not edit: every build rewrites it; change the template or deploy-kit.yaml (docs/build.md).",
            target => target,
            base => base,
            binary => binary,
            path => format!("/{}/{binary}", super::image::BINARY_DIR),
            port => super::image::PORT,
            user => super::image::USER,
            labels => labels.to_vec(),
        },
    )
}

/// Builds and pushes the image with `cli`; returns what was pushed, by digest.
pub fn build_and_push(
    cli: &DockerCli,
    deployment: &Deployment,
    binary_name: &str,
    binaries: &[DockerBinary<'_>],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ImageRecord, crate::CommandError> {
    let service = &deployment.config.service;
    let image = service.image();
    if !super::names_registry(&image) {
        return Err(BuildError::NoRegistry { image }.into());
    }
    let target = Reference::parse(&image).map_err(|source| BuildError::Push {
        image: image.clone(),
        source,
    })?;
    let base = service
        .base_image
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_BASE_IMAGE.to_string());
    let base_registry = Reference::parse(&base)
        .map_err(|source| BuildError::BaseImage {
            base: base.clone(),
            source,
        })?
        .registry;
    if binaries.len() > 1 && cli.flavor != Flavor::Buildx {
        return Err(BuildError::DockerSeveralArchitectures {
            program: cli.name.clone(),
            target: deployment.target_name.clone(),
            count: binaries.len(),
        }
        .into());
    }
    let tag = target
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    let tagged = format!("{}:{tag}", target.name());

    let context = deployment.output_dir.join(CONTEXT_DIR);
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |error: std::io::Error| BuildError::Io {
            what: format!("`{what}`"),
            message: error.to_string(),
        }
    };
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).map_err(io(&context))?;
    for binary in binaries {
        let path = context.join(binary.architecture.oci()).join(binary_name);
        std::fs::create_dir_all(path.parent().expect("a parent")).map_err(io(&path))?;
        std::fs::write(&path, binary.bytes).map_err(io(&path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&path))?;
        }
    }
    let labels = vec![
        (
            "org.opencontainers.image.title".to_string(),
            service.name.clone(),
        ),
        (
            "org.opencontainers.image.base.name".to_string(),
            base.clone(),
        ),
        (
            "dev.deploy-kit.binary.sha256".to_string(),
            binaries[0].sha256.to_string(),
        ),
    ];
    let dockerfile_path = context.join("Dockerfile");
    let text = dockerfile(&deployment.target_name, &base, binary_name, &labels)?;
    std::fs::write(&dockerfile_path, text).map_err(io(&dockerfile_path))?;

    let path = |p: &Path| p.display().to_string();
    let platforms = binaries
        .iter()
        .map(|b| format!("linux/{}", b.architecture.oci()))
        .collect::<Vec<_>>()
        .join(",");
    let mut build: Vec<String> = vec!["build".into(), "--platform".into(), platforms];
    if let [only] = binaries {
        // Set for every flavor: the legacy builder does not set it itself.
        build.extend([
            "--build-arg".into(),
            format!("TARGETARCH={}", only.architecture.oci()),
        ]);
    }
    build.extend([
        "--tag".into(),
        tagged.clone(),
        "--file".into(),
        path(&dockerfile_path),
    ]);
    let digest = match cli.flavor {
        Flavor::Buildx => {
            let metadata = context.join("metadata.json");
            let mut args = vec!["buildx".to_string()];
            args.extend(build);
            args.extend([
                "--push".into(),
                "--metadata-file".into(),
                path(&metadata),
                path(&context),
            ]);
            cli.run(&args)?;
            let text =
                std::fs::read_to_string(&metadata).map_err(|error| BuildError::DockerDigest {
                    command: cli.shown(&args),
                    message: format!("failed to read `{}`: {error}", metadata.display()),
                })?;
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["containerimage.digest"].as_str().map(str::to_string))
                .ok_or_else(|| BuildError::DockerDigest {
                    command: cli.shown(&args),
                    message: format!("`{}` has no `containerimage.digest`", metadata.display()),
                })?
        }
        Flavor::Podman => {
            // Registries deploy-kit speaks plain HTTP to, podman does too.
            let insecure = Transport::from_env(env)
                .map_err(BuildError::Transport)?
                .insecure;
            let plain = |registry: &str| insecure.iter().any(|r| r == registry);
            let mut args = build;
            if plain(&base_registry) {
                args.push("--tls-verify=false".into());
            }
            args.push(path(&context));
            cli.run(&args)?;
            let digest_file = context.join("digest");
            let mut push = vec!["push".to_string()];
            if plain(&target.registry) {
                push.push("--tls-verify=false".into());
            }
            push.extend(["--digestfile".into(), path(&digest_file), tagged.clone()]);
            cli.run(&push)?;
            std::fs::read_to_string(&digest_file)
                .map_err(|error| BuildError::DockerDigest {
                    command: cli.shown(&push),
                    message: format!("failed to read `{}`: {error}", digest_file.display()),
                })?
                .trim()
                .to_string()
        }
        Flavor::Classic => {
            let mut args = build;
            args.push(path(&context));
            cli.run(&args)?;
            let push = vec!["push".to_string(), tagged.clone()];
            let output = cli.run(&push)?;
            pushed_digest(&output).ok_or_else(|| BuildError::DockerDigest {
                command: cli.shown(&push),
                message: "its output has no `digest: sha256:...` line".into(),
            })?
        }
    };
    if !is_digest(&digest) {
        return Err(BuildError::DockerDigest {
            command: format!("{} push", cli.name),
            message: format!("`{digest}` is not a sha256 digest"),
        }
        .into());
    }
    Ok(ImageRecord {
        repository: target.name(),
        tag,
        reference: target.by_digest(&digest),
        digest,
        base,
        // Docker resolved the base itself; deploy-kit did not read it.
        base_digest: String::new(),
        bytes: 0,
        pushed: PushStats::default(),
        platforms: Vec::new(),
        engine: Some(crate::config::BuildEngine::Docker.name().to_string()),
    })
}

/// The digest in `docker push`'s `<tag>: digest: sha256:... size: N` line.
fn pushed_digest(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (_, rest) = line.split_once("digest: ")?;
        let digest = rest.split_whitespace().next()?;
        is_digest(digest).then(|| digest.to_string())
    })
}

fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_push_output_gives_the_digest() {
        let output = "The push refers to repository [127.0.0.1:5000/x]\n5f70bf18a086: Pushed\n0.1.0: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 528\n";
        assert_eq!(
            pushed_digest(output).as_deref(),
            Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(pushed_digest("digest: sha256:abc size: 1"), None);
    }

    #[test]
    fn the_dockerfile_copies_the_binary_of_each_architecture_onto_the_base() {
        let text = dockerfile(
            "web",
            "127.0.0.1:5000/base/debian-cc:12",
            "sensor-rpc",
            &[(
                "org.opencontainers.image.title".into(),
                "sensor \"rpc\"".into(),
            )],
        )
        .unwrap();
        for line in [
            "FROM 127.0.0.1:5000/base/debian-cc:12\n",
            "ARG TARGETARCH\n",
            "COPY ${TARGETARCH}/sensor-rpc /usr/local/bin/sensor-rpc\n",
            "ENV PORT=8080 KIT_LOG_FORMAT=json\n",
            "EXPOSE 8080\n",
            "LABEL org.opencontainers.image.title=\"sensor \\\"rpc\\\"\"\n",
            "USER 65532:65532\n",
            "ENTRYPOINT [\"/usr/local/bin/sensor-rpc\"]\n",
            "CMD [\"serve\", \"--listen\", \"0.0.0.0:8080\"]\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_missing_cli_is_named() {
        let env = |name: &str| match name {
            "DOCKER" => Some("/nonexistent/docker".to_string()),
            _ => None,
        };
        let error = DockerCli::find(&env).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`build.engine: docker` needs a docker CLI, and `/nonexistent/docker` does not exist"
        );
        assert!(
            error.hint().contains("build.engine: native"),
            "{}",
            error.hint()
        );
    }
}
