//! `fly` targets through `fly` (or `flyctl`), logged in with `fly auth login`
//! or `FLY_API_TOKEN`.
//!
//! `up`: the app (`fly apps create` only when `fly apps list --json` lacks
//! it); the signing key as the Fly secret `VGI_SIGNING_KEY`, set once with
//! `fly secrets import --stage` reading `NAME=VALUE` from stdin (Fly never
//! returns secret values, and the service does not need it back, so it is
//! never read back or stored locally); a check that the API-keys secret is
//! set; `fly deploy` with the rendered `fly.toml` (the cargo workspace,
//! `service.workspace`, is the build context, or `--image` when
//! `service.image` is set); `fly scale
//! count` to `instances`.
//!
//! The app is `<service.name>-<environment>` (the settings' `target.app`),
//! or the app the state already records.
//!
//! `down`: `fly apps destroy` when `up` created the app (secrets and
//! machines go with it); for an adopted app, the secret is unset when `up`
//! set it, the machines scaled to 0, and the app kept.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Cli, args, created_before, mark_created, new_signing_key, sha256_hex};
use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind};
use crate::render::{RenderOptions, Settings};

/// Resource kind of the Fly app.
pub const APP: &str = "fly-app";

#[derive(Debug, Clone)]
struct Plan {
    app: String,
    region: String,
    instances: u32,
    image: Option<String>,
    /// The variable holding the signing key (`VGI_SIGNING_KEY`).
    key_variable: Option<String>,
    /// Secrets the user sets (API keys): checked, never created.
    provided_variables: Vec<(String, String)>,
    fly_toml_sha256: String,
}

/// `previous` is the recorded state: the app it names stays the app (a
/// deployment made when the app was `service.name` keeps running there);
/// a new deployment's app is `<service.name>-<environment>`.
fn resolve(deployment: &Deployment, previous: Option<&State>) -> Result<Plan, CommandError> {
    let settings = Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &RenderOptions::default(),
    )
    .map_err(|error| CommandError::new(error.message, error.hint, 2))?;
    let files = crate::render::render_target(&deployment.config, &deployment.target_name)?;
    let fly_toml = files
        .iter()
        .find(|f| f.path.ends_with("fly.toml"))
        .map(|f| sha256_hex(&f.contents))
        .unwrap_or_default();
    let key_variable = settings.signing_key.as_ref().map(|s| s.variable.clone());
    let provided_variables = settings
        .secrets
        .iter()
        .filter(|s| Some(&s.variable) != key_variable.as_ref())
        .map(|s| (s.variable.clone(), s.secret_name.clone()))
        .collect();
    Ok(Plan {
        app: previous
            .and_then(recorded_app)
            .map_or_else(|| settings.target.app.clone(), str::to_string),
        region: deployment
            .target
            .region
            .clone()
            .unwrap_or_else(|| "ams".into()),
        instances: deployment.target.instances,
        image: deployment.config.service.image.clone(),
        key_variable,
        provided_variables,
        fly_toml_sha256: fly_toml,
    })
}

/// The Fly app a state records.
fn recorded_app(state: &State) -> Option<&str> {
    state
        .resources
        .iter()
        .find(|r| r.kind == APP)
        .map(|r| r.name.as_str())
}

/// Desired resources: the app, the key secret, the deployed machines.
pub fn desired(deployment: &Deployment) -> Result<Vec<Resource>, CommandError> {
    let previous = State::load(&deployment.state_path())?;
    desired_of(&resolve(deployment, previous.as_ref())?)
}

fn desired_of(plan: &Plan) -> Result<Vec<Resource>, CommandError> {
    let mut resources = vec![Resource::new(APP, &plan.app).with("primary_region", &plan.region)];
    if let Some(variable) = &plan.key_variable {
        resources.push(Resource::new(
            kind::SECRET,
            format!("{}/{variable}", plan.app),
        ));
    }
    let mut machines = Resource::new(kind::FUNCTION, &plan.app)
        .with(super::FILE_SHA256, &plan.fly_toml_sha256)
        .with("instances", plan.instances.to_string());
    if let Some(image) = &plan.image {
        machines = machines.with("image", image);
    }
    resources.push(machines);
    Ok(resources)
}

pub struct FlyEngine {
    cli: Cli,
    plan: Plan,
    previous: Option<State>,
    output_dir: PathBuf,
    deployment: Deployment,
}

/// `Name` (flyctl's Go structs) or `name` of each entry of a JSON array.
fn names_in(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    value
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| {
                    entry
                        .get("Name")
                        .or_else(|| entry.get("name"))
                        .and_then(|n| n.as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl FlyEngine {
    pub fn new(
        deployment: &Deployment,
        cli: Cli,
        previous: Option<State>,
    ) -> Result<FlyEngine, CommandError> {
        Ok(FlyEngine {
            cli,
            plan: resolve(deployment, previous.as_ref())?,
            previous,
            output_dir: deployment.output_dir.clone(),
            deployment: deployment.clone(),
        })
    }

    fn logged_in(&self) -> Result<(), CommandError> {
        if self.cli.run(&args(["auth", "whoami"]), None, true)?.success {
            return Ok(());
        }
        Err(CommandError::new(
            "`fly auth whoami` failed: flyctl is not logged in",
            "log in with `fly auth login`, or set `FLY_API_TOKEN` (from `fly tokens create deploy`)",
            2,
        ))
    }

    fn secret_names(&self) -> Result<Vec<String>, CommandError> {
        let listed = self.cli.must(
            &args(["secrets", "list", "--app", &self.plan.app, "--json"]),
            None,
            true,
            "check that you may read the app's secrets (`fly secrets list --app APP`)",
        )?;
        Ok(names_in(&listed))
    }
}

impl Engine for FlyEngine {
    fn name(&self) -> &'static str {
        "fly"
    }

    fn desired(&self) -> Result<Vec<Resource>, CommandError> {
        desired_of(&self.plan)
    }

    fn apply(
        &self,
        desired: &[Resource],
        progress: &mut Progress,
        made: &mut dyn FnMut(Resource) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        progress.step("fly auth", || {
            self.logged_in().map(|()| ((), "logged in".into()))
        })?;
        let app = &self.plan.app;
        for want in desired {
            let resource = match want.kind.as_str() {
                APP => {
                    let created = progress.step(&want.address(), || {
                        let listed = self.cli.must(
                            &args(["apps", "list", "--json"]),
                            None,
                            true,
                            "check `fly apps list`",
                        )?;
                        if names_in(&listed).iter().any(|name| name == app) {
                            return Ok((false, "exists".into()));
                        }
                        self.cli.must(
                            &args(["apps", "create", app]),
                            None,
                            false,
                            "app names are global on Fly; change `service.name` if it is taken",
                        )?;
                        Ok((true, "created".into()))
                    })?;
                    mark_created(
                        want.clone(),
                        created,
                        created_before(self.previous.as_ref(), APP, app),
                    )
                }
                kind::SECRET => {
                    let variable = self.plan.key_variable.clone().unwrap_or_default();
                    let created = progress.step(&want.address(), || {
                        let names = self.secret_names()?;
                        for (provided, secret) in &self.plan.provided_variables {
                            if !names.contains(provided) {
                                return Err(CommandError::new(
                                    format!("the Fly secret `{provided}` ({secret}) is not set on app `{app}`"),
                                    format!("set it from a file with `printf '{provided}=%s\\n' \"$(cat FILE)\" | fly secrets import --app {app} --stage`, then run `up` again"),
                                    1,
                                ));
                            }
                        }
                        if names.contains(&variable) {
                            return Ok((false, "set, key kept".into()));
                        }
                        let line = format!("{variable}={}\n", new_signing_key()?);
                        self.cli.must(
                            &args(["secrets", "import", "--app", app, "--stage"]),
                            Some(line.as_bytes()),
                            false,
                            "read flyctl's message above",
                        )?;
                        Ok((true, "set with a new key".into()))
                    })?;
                    mark_created(
                        want.clone(),
                        created,
                        created_before(self.previous.as_ref(), kind::SECRET, &want.name),
                    )
                }
                _ => {
                    let fly_toml = self.output_dir.join("fly.toml");
                    progress.step(&format!("{} deploy", want.address()), || {
                        let mut argv: Vec<OsString> = args(["deploy"]);
                        // The Dockerfile copies the whole cargo workspace.
                        let context = self
                            .deployment
                            .config
                            .service
                            .workspace_dir(&self.cli.working_dir);
                        argv.push(context.into_os_string());
                        argv.push("--config".into());
                        argv.push(fly_toml.clone().into_os_string());
                        argv.extend(args(["--app", app.as_str()]));
                        if let Some(image) = &self.plan.image {
                            argv.extend(args(["--image", image.as_str()]));
                        }
                        self.cli.must(
                            &argv,
                            None,
                            false,
                            &format!("read flyctl's message above; `fly logs --app {app}` shows the machines' logs"),
                        )?;
                        Ok(((), "deployed".into()))
                    })?;
                    progress.step(&format!("{} scale", want.address()), || {
                        let count = self.plan.instances.to_string();
                        self.cli.must(
                            &args([
                                "scale",
                                "count",
                                count.as_str(),
                                "--app",
                                app.as_str(),
                                "--yes",
                            ]),
                            None,
                            false,
                            "read flyctl's message above",
                        )?;
                        Ok(((), format!("{count} machine(s)")))
                    })?;
                    want.clone()
                }
            };
            made(resource)?;
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
        progress.step("fly auth", || {
            self.logged_in().map(|()| ((), "logged in".into()))
        })?;
        // The app this state made or adopted, whatever the config says now.
        let app = recorded_app(state).unwrap_or(&self.plan.app);
        let app_goes = state
            .find(APP, app)
            .and_then(|r| r.outputs.get(super::CREATED))
            .is_some_and(|c| c == "true");
        let mut kept = Vec::new();
        for resource in state.resources.iter().rev() {
            match resource.kind.as_str() {
                APP if app_goes => {
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args(["apps", "destroy", &resource.name, "--yes"]),
                            None,
                            false,
                            "read flyctl's message above",
                        )?;
                        Ok(((), "destroyed, with its secrets and machines".into()))
                    })?;
                }
                APP => {
                    progress.note(&format!(
                        "  {}: kept, it existed before `up`",
                        resource.address()
                    ));
                    kept.push(Kept {
                        resource: resource.clone(),
                        reason: format!("Fly app `{}` existed before `up`", resource.name),
                        command: format!("fly apps destroy {} --yes", resource.name),
                    });
                }
                _ if app_goes => {
                    progress.note(&format!("  {}: goes with the app", resource.address()));
                }
                kind::SECRET
                    if resource
                        .outputs
                        .get(super::CREATED)
                        .is_none_or(|c| c != "true") =>
                {
                    progress.note(&format!(
                        "  {}: kept, it was set before `up`",
                        resource.address()
                    ));
                }
                kind::SECRET => {
                    let variable = resource.name.rsplit('/').next().unwrap_or_default();
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args(["secrets", "unset", variable, "--app", app, "--stage"]),
                            None,
                            false,
                            "read flyctl's message above",
                        )?;
                        Ok(((), "unset".into()))
                    })?;
                }
                _ => {
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args(["scale", "count", "0", "--app", app, "--yes"]),
                            None,
                            false,
                            "read flyctl's message above",
                        )?;
                        Ok(((), "scaled to 0".into()))
                    })?;
                }
            }
            removed(resource)?;
        }
        Ok(kept)
    }
}
