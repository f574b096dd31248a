//! `railway` targets through the `railway` CLI (4.20 or later, for
//! `--set-from-stdin`), logged in (`railway login` or `RAILWAY_TOKEN`) and
//! linked to a project (`railway link`) in the config's directory. The
//! service is `service.name`; deploy-kit does not create projects or
//! services, which need a workspace choice (`railway add --service NAME`).
//!
//! `up`: reads the service's variable names (`railway variables --json`,
//! whose values are parsed away and never shown); checks the API-keys
//! variable is set; sets `VGI_SIGNING_KEY` once with `--set-from-stdin`;
//! sets the plain variables of the rendered `railway.env` with `--set`
//! (they hold no secret); `railway up --ci` from the config's directory.
//!
//! `down`: `railway down --yes` removes the latest deployment. The service
//! and its variables (the key included) stay, because `up` did not create
//! the service; `down` prints the command that deletes the key.

use std::path::PathBuf;

use super::{Cli, args, new_signing_key, sha256_hex};
use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind};
use crate::render::{RenderOptions, Settings};

/// Resource kind of the plain variables set from `railway.env`.
pub const VARIABLES: &str = "railway-variables";

#[derive(Debug, Clone)]
struct Plan {
    service: String,
    key_variable: Option<String>,
    provided_variables: Vec<(String, String)>,
    /// `NAME=value` lines of `railway.env` (no secrets).
    variables: Vec<String>,
    railway_json_sha256: String,
    instances: u32,
}

fn resolve(deployment: &Deployment) -> Result<Plan, CommandError> {
    let settings = Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &RenderOptions::default(),
    )
    .map_err(|error| CommandError::new(error.message, error.hint, 2))?;
    let files = crate::render::render_target(&deployment.config, &deployment.target_name)?;
    let file = |name: &str| files.iter().find(|f| f.path.ends_with(name));
    let variables = file("railway.env")
        .map(|f| {
            f.contents
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains('='))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let key_variable = settings.signing_key.as_ref().map(|s| s.variable.clone());
    Ok(Plan {
        service: settings.service.name.clone(),
        provided_variables: settings
            .secrets
            .iter()
            .filter(|s| Some(&s.variable) != key_variable.as_ref())
            .map(|s| (s.variable.clone(), s.secret_name.clone()))
            .collect(),
        key_variable,
        variables,
        railway_json_sha256: file("railway.json")
            .map(|f| sha256_hex(&f.contents))
            .unwrap_or_default(),
        instances: deployment.target.instances,
    })
}

/// Desired resources: the key variable, the plain variables, the deployment.
pub fn desired(deployment: &Deployment) -> Result<Vec<Resource>, CommandError> {
    let plan = resolve(deployment)?;
    let mut resources = Vec::new();
    if let Some(variable) = &plan.key_variable {
        resources.push(Resource::new(
            kind::SECRET,
            format!("{}/{variable}", plan.service),
        ));
    }
    resources.push(
        Resource::new(VARIABLES, &plan.service)
            .with("variables.sha256", sha256_hex(&plan.variables.join("\n"))),
    );
    resources.push(
        Resource::new(kind::FUNCTION, &plan.service)
            .with(super::FILE_SHA256, &plan.railway_json_sha256)
            .with("instances", plan.instances.to_string()),
    );
    Ok(resources)
}

pub struct RailwayEngine {
    cli: Cli,
    plan: Plan,
    deployment: Deployment,
    output_dir: PathBuf,
}

impl RailwayEngine {
    pub fn new(deployment: &Deployment, cli: Cli) -> Result<RailwayEngine, CommandError> {
        Ok(RailwayEngine {
            cli,
            plan: resolve(deployment)?,
            deployment: deployment.clone(),
            output_dir: deployment.output_dir.clone(),
        })
    }

    fn linked(&self) -> Result<(), CommandError> {
        if !self.cli.run(&args(["whoami"]), None, true)?.success {
            return Err(CommandError::new(
                "`railway whoami` failed: the Railway CLI is not logged in",
                "log in with `railway login`, or set `RAILWAY_TOKEN` (a project token)",
                2,
            ));
        }
        if !self
            .cli
            .run(&args(["status", "--json"]), None, true)?
            .success
        {
            return Err(CommandError::new(
                format!(
                    "`railway status` failed: `{}` is not linked to a Railway project",
                    self.cli.working_dir.display()
                ),
                format!(
                    "link it with `railway link` (or `railway init --name {}`), and add the service with `railway add --service {}`",
                    self.plan.service, self.plan.service
                ),
                2,
            ));
        }
        Ok(())
    }

    /// The service's variable names. The JSON holds the values too: it is
    /// parsed here and dropped, never shown.
    fn variable_names(&self) -> Result<Vec<String>, CommandError> {
        let listed = self.cli.must(
            &args(["variables", "--service", &self.plan.service, "--json"]),
            None,
            true,
            &format!(
                "check that the service exists (`railway add --service {}`)",
                self.plan.service
            ),
        )?;
        let value: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
        Ok(value
            .as_object()
            .map(|object| object.keys().cloned().collect())
            .unwrap_or_default())
    }
}

impl Engine for RailwayEngine {
    fn name(&self) -> &'static str {
        "railway"
    }

    fn desired(&self) -> Result<Vec<Resource>, CommandError> {
        desired(&self.deployment)
    }

    fn apply(
        &self,
        desired: &[Resource],
        progress: &mut Progress,
        made: &mut dyn FnMut(Resource) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        progress.step("railway project", || {
            self.linked().map(|()| ((), "linked".into()))
        })?;
        let service = &self.plan.service;
        for want in desired {
            match want.kind.as_str() {
                kind::SECRET => {
                    let variable = self.plan.key_variable.clone().unwrap_or_default();
                    progress.step(&want.address(), || {
                        let names = self.variable_names()?;
                        for (provided, secret) in &self.plan.provided_variables {
                            if !names.contains(provided) {
                                return Err(CommandError::new(
                                    format!("the Railway variable `{provided}` ({secret}) is not set on service `{service}`"),
                                    format!("set it from a file with `railway variables --service {service} --set-from-stdin {provided} --skip-deploys < FILE`, then run `up` again"),
                                    1,
                                ));
                            }
                        }
                        if names.contains(&variable) {
                            return Ok(((), "set, key kept".into()));
                        }
                        let key = new_signing_key()?;
                        self.cli.must(
                            &args(["variables", "--service", service, "--set-from-stdin", &variable, "--skip-deploys"]),
                            Some(key.as_bytes()),
                            false,
                            "`--set-from-stdin` needs Railway CLI 4.20 or later (`railway upgrade`)",
                        )?;
                        Ok(((), "set with a new key".into()))
                    })?;
                }
                VARIABLES => {
                    progress.step(&want.address(), || {
                        let mut argv =
                            args(["variables", "--service", service.as_str(), "--skip-deploys"]);
                        for line in &self.plan.variables {
                            argv.extend(args(["--set", line.as_str()]));
                        }
                        self.cli.must(
                            &argv,
                            None,
                            false,
                            "read the Railway CLI's message above",
                        )?;
                        Ok(((), format!("{} set", self.plan.variables.len())))
                    })?;
                }
                _ => {
                    progress.step(&format!("{} up", want.address()), || {
                        self.cli.must(
                            &args(["up", "--service", service.as_str(), "--ci"]),
                            None,
                            false,
                            &format!(
                                "read the build log above; the service's config-as-code path must point at `{}`",
                                self.output_dir.join("railway.json").display()
                            ),
                        )?;
                        Ok(((), "deployed".into()))
                    })?;
                }
            }
            made(want.clone())?;
        }
        Ok(())
    }

    fn destroy(
        &self,
        state: &State,
        _options: DestroyOptions,
        progress: &mut Progress,
        removed: &mut dyn FnMut(&Resource) -> Result<(), CommandError>,
    ) -> Result<Vec<Kept>, CommandError> {
        progress.step("railway project", || {
            self.linked().map(|()| ((), "linked".into()))
        })?;
        let service = &self.plan.service;
        let mut kept = Vec::new();
        for resource in state.resources.iter().rev() {
            match resource.kind.as_str() {
                kind::FUNCTION => {
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args(["down", "--service", service, "--yes"]),
                            None,
                            false,
                            "read the Railway CLI's message above",
                        )?;
                        Ok(((), "deployment removed".into()))
                    })?;
                }
                kind::SECRET => {
                    let variable = resource.name.rsplit('/').next().unwrap_or_default();
                    progress.note(&format!("  {}: kept on the service", resource.address()));
                    kept.push(Kept {
                        resource: resource.clone(),
                        reason: format!("the signing key `{variable}` stays on Railway service `{service}`, which `up` did not create"),
                        command: format!("railway variable delete {variable} --service {service}"),
                    });
                }
                _ => progress.note(&format!("  {}: kept on the service", resource.address())),
            }
            removed(resource)?;
        }
        Ok(kept)
    }
}
