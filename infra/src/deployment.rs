//! What `plan`, `up` and `down` share: the loaded config and chosen target,
//! where its files and state live, the doctor gate, the rendered files, and
//! the native engine for its platform.

use std::path::{Path, PathBuf};

use kit_checks::render::Format;
use kit_checks::{Date, Mode, Severity};

use crate::CommandError;
use crate::artifact::Artifact;
use crate::build::{BuildRecord, ImageRecord};
use crate::config::{DEFAULT_CONFIG_FILE, DeployConfig, TargetConfig};
use crate::doctor::{DoctorOutput, DoctorRequest, OutputFormat};
use crate::engine::{self, Resource, STATE_FILE};

/// A config file and one of its targets.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub config: DeployConfig,
    /// The config file, absolute.
    pub config_path: PathBuf,
    /// How messages name the config file.
    pub display: String,
    pub target_name: String,
    pub target: TargetConfig,
    /// `.deploy-kit/<environment>/<target>/` beside the config file.
    pub output_dir: PathBuf,
    /// What is built and run (`service.package`, `service.binary`, ...);
    /// `None` when the config names no package and no cargo workspace
    /// could supply one (see [`Deployment::artifact`]).
    pub artifact: Option<Artifact>,
    /// A prebuilt service binary or Lambda package (`up --kit-service`,
    /// `up --package`): nothing is built, and the doctor's ART001 skips.
    pub prebuilt_binary: Option<PathBuf>,
    /// What the last `deploy-kit build` of this target made (`build.json`).
    pub built: Option<BuildRecord>,
}

impl Deployment {
    /// Loads `config` (default `./deploy-kit.yaml` under `cwd`) and picks `target`.
    pub fn load(
        config: Option<&Path>,
        target: Option<&str>,
        cwd: &Path,
    ) -> Result<Deployment, CommandError> {
        let display = config
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string());
        let path = cwd.join(config.unwrap_or(Path::new(DEFAULT_CONFIG_FILE)));
        if config.is_none() && !path.exists() {
            return Err(CommandError::new(
                format!("no `{DEFAULT_CONFIG_FILE}` in `{}`", cwd.display()),
                "run `deploy-kit init`, pass `--config FILE` or set `DEPLOY_KIT_CONFIG`",
                2,
            ));
        }
        let parsed = DeployConfig::load(&path).map_err(|error| {
            CommandError::new(
                error.to_string(),
                "fix the file; every key is described in the example `deploy-kit.yaml`",
                2,
            )
        })?;
        let mut deployment = Deployment::from_config(parsed, &path, target.unwrap_or_default())?;
        deployment.display = display;
        Ok(deployment)
    }

    /// The deployment of `target` (empty: the default target) from a
    /// parsed `config` whose file is `path` (tests, and engines called as a
    /// library).
    pub fn from_config(
        mut parsed: DeployConfig,
        path: &Path,
        target: &str,
    ) -> Result<Deployment, CommandError> {
        let target = Some(target).filter(|t| !t.is_empty());
        let display = path.display().to_string();
        let path = path.to_path_buf();
        let (name, chosen) = parsed.target(target).map_err(|message| {
            CommandError::new(message, "name a target: `deploy-kit up NAME`", 2)
        })?;
        let (name, chosen) = (name.to_string(), chosen.clone());
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        crate::artifact::fill_defaults(&mut parsed, &base)?;
        let output_dir = engine::output_dir(&base, &parsed, &name);
        let built = BuildRecord::load(&output_dir);
        if let Some(image) = built.as_ref().and_then(|record| record.image.as_ref()) {
            deploy_by_digest(&mut parsed, image);
        }
        Ok(Deployment {
            output_dir,
            built,
            artifact: Artifact::configured(&parsed.service, &base),
            config: parsed,
            config_path: path,
            display,
            target_name: name,
            target: chosen,
            prebuilt_binary: None,
        })
    }

    /// The artifact, or the error that says how to name it.
    pub fn artifact(&self) -> Result<&Artifact, CommandError> {
        self.artifact.as_ref().ok_or_else(|| {
            let workspace = self
                .config_path
                .parent()
                .map(|dir| self.config.service.workspace_dir(dir))
                .unwrap_or_default();
            CommandError::new(
                format!(
                    "`service.package` is not set, and `{}` has no cargo workspace to find it in",
                    workspace.display()
                ),
                "set `service.package` (and `service.binary`) in deploy-kit.yaml, or `service.workspace` to the cargo workspace root",
                2,
            )
        })
    }

    /// Every cargo feature a build for this target turns on.
    pub fn features(&self) -> Vec<String> {
        crate::artifact::required_features(
            &self.config.service,
            self.target.platform,
            self.config.storage.as_ref(),
        )
        .into_iter()
        .map(|feature| feature.name)
        .collect()
    }

    pub fn state_path(&self) -> PathBuf {
        self.output_dir.join(STATE_FILE)
    }

    /// Runs the doctor on this target (`Mode::Offline` before, `Online` after `up`).
    pub fn doctor(
        &self,
        mode: Mode,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DoctorOutput, CommandError> {
        self.doctor_with_replicas(mode, &[], env)
    }

    /// [`Deployment::doctor`] against these replica URLs (empty: the
    /// target's `replicas`, or what a compose `up` recorded).
    pub fn doctor_with_replicas(
        &self,
        mode: Mode,
        replicas: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DoctorOutput, CommandError> {
        if mode == Mode::Online {
            // After `up`, this is the smoke test of the deployment.
            return crate::timings::measure(crate::timings::Phase::Smoke, || {
                self.run_doctor(mode, replicas, env)
            });
        }
        self.run_doctor(mode, replicas, env)
    }

    fn run_doctor(
        &self,
        mode: Mode,
        replicas: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DoctorOutput, CommandError> {
        let today = match env("DEPLOY_KIT_TODAY").filter(|t| !t.is_empty()) {
            Some(text) => Date::parse(&text).map_err(|e| {
                CommandError::new(
                    format!("`DEPLOY_KIT_TODAY`: {e}"),
                    "unset `DEPLOY_KIT_TODAY` or set it like `2026-01-31`",
                    2,
                )
            })?,
            None => Date::today_utc(),
        };
        let request = DoctorRequest {
            config: Some(self.config_path.clone()),
            target: Some(self.target_name.clone()),
            mode,
            format: OutputFormat::Report(Format::Text),
            fail_on: Severity::Error,
            apply_waivers: true,
            replicas: replicas.to_vec(),
            today: None,
            list_checks: false,
            explain: None,
            prebuilt_binary: self.prebuilt_binary.clone(),
        };
        crate::doctor::report(
            &self.config,
            &self.display,
            &self.config_path,
            &request,
            Format::Text,
            today,
            env,
        )
        .map_err(|error| CommandError::new(error.message, error.hint, 2))
    }

    /// `render_target` into the output directory: the written paths, or
    /// why rendering failed (the native engines do not need the files).
    pub fn render(&self) -> Result<Vec<PathBuf>, CommandError> {
        let files = crate::render::render_target(&self.config, &self.target_name)?;
        let mut written = Vec::new();
        for file in files {
            let path = self.output_dir.join(&file.path);
            let failed = |error: std::io::Error| {
                CommandError::new(
                    format!("failed to write `{}`: {error}", path.display()),
                    "check that the working directory is writable",
                    1,
                )
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(failed)?;
            }
            std::fs::write(&path, &file.contents).map_err(failed)?;
            written.push(path);
        }
        Ok(written)
    }

    /// The engine's name and desired resources (no network), through the
    /// one engine seam ([`engine::target::open`]). `code_sha256` is the
    /// function package's hash when one was built.
    pub fn desired(
        &self,
        code_sha256: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(&'static str, Vec<Resource>), CommandError> {
        let engine = engine::target::open(self)?;
        Ok((engine.name(), engine.desired(code_sha256, env)?))
    }
}

/// Deploys refer to an image by digest, never by a moving tag: when the
/// last build pushed `service.image`'s repository, `service.image` becomes
/// `repository@sha256:...` for every template and engine after this.
pub fn deploy_by_digest(config: &mut DeployConfig, image: &ImageRecord) {
    let configured = config.service.image();
    let same_repository = crate::build::registry::Reference::parse(&configured)
        .is_ok_and(|reference| reference.name() == image.repository);
    if same_repository {
        config.service.image = Some(image.reference.clone());
    }
}

/// The service binary for a package built elsewhere (Lambda, Azure): the
/// flag (or `DEPLOY_KIT_KIT_SERVICE`), else `<binary>` next to `deploy-kit`,
/// else on `PATH`. `build` is the command that makes one, for the hint.
pub fn find_service_binary(
    flag: Option<&Path>,
    artifact: &Artifact,
    build: &str,
) -> Result<PathBuf, CommandError> {
    let hint = format!(
        "build it with `{build}` and pass `--kit-service PATH` (or set `DEPLOY_KIT_KIT_SERVICE`)"
    );
    if let Some(path) = flag {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(CommandError::new(
                format!("service binary `{}` does not exist", path.display()),
                hint,
                2,
            ))
        };
    }
    let current_exe = std::env::current_exe().ok();
    let path_var = std::env::var_os("PATH");
    crate::artifact::find_prebuilt(
        &artifact.binary,
        current_exe.as_deref(),
        path_var.as_deref(),
    )
    .ok_or_else(|| {
        CommandError::new(
            format!(
                "no `{}` binary found (looked at `--kit-service`, `DEPLOY_KIT_KIT_SERVICE`, next to `deploy-kit` and on `PATH`)",
                artifact.binary
            ),
            hint,
            2,
        )
    })
}
