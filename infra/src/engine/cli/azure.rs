//! `azure-functions` targets through `az`, logged in with `az login`.
//!
//! Why the Functions custom handler and not Container Apps: the platform is
//! `azure-functions`, whose limits (230 s HTTP timeout, 210 MiB bodies) the
//! doctor judges, and the rendered `host.json` and `rpc/function.json` are a
//! custom handler running `<service.binary> serve`. Container Apps would be
//! another platform with other limits and templates.
//!
//! `up`, each step reading first (`show`) and creating only what is missing:
//! 1. the resource group `<service>-<target>` (tagged `managed-by=deploy-kit`
//!    and [`DEPLOYMENT_TAG`]; an existing group without this state's tag is
//!    refused unless `--adopt`, see [`crate::engine::owner`]);
//! 2. the storage account (Standard_LRS, StorageV2, TLS 1.2, no public blob
//!    access), the container `storage.bucket`, and the lifecycle policy
//!    expiring `<container>/<prefix>` written to `azure/lifecycle-policy.json`
//!    and applied with `az storage account management-policy create --policy @FILE`;
//! 3. the Key Vault (RBAC authorization) and the signing-key secret, set
//!    once with `az keyvault secret set --file /dev/stdin` (the key on stdin,
//!    `--query id` so the value is never printed); Key Vault can return it,
//!    but nothing needs it back: the app reads it through a reference;
//! 4. the function app (Linux consumption plan, runtime `custom`,
//!    Functions 4, system identity), the `Key Vault Secrets User` role for
//!    that identity, `Storage Blob Data Contributor` on the storage account
//!    (so the service signs user delegation SAS URLs by its identity, with
//!    no account key), app settings (the `KIT_*` env with `KIT_STORAGE=azure`
//!    and `AZURE_STORAGE_ACCOUNT`, and
//!    `VGI_SIGNING_KEY=@Microsoft.KeyVault(SecretUri=...)`), and the package
//!    `up` built with `deploy-kit build` (`host.json`, `rpc/function.json`,
//!    the checked binary; or `--package ZIP`) by zip deploy, byte for byte.
//!
//! `down`: newest first; the storage account (and so the group) is kept
//! unless `--delete-data`; the group is deleted only when `up` created it.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{Cli, args, created_before, mark_created, new_signing_key, sha256_hex};
use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::owner::{Claim, Owner};
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind, setting};
use crate::render::{RenderOptions, Settings};

pub const RESOURCE_GROUP: &str = "resource-group";
pub const KEY_VAULT: &str = "key-vault";
/// The role the function's identity gets on the storage account: read,
/// write and delete blobs, and request user delegation keys.
pub const STORAGE_ROLE: &str = "Storage Blob Data Contributor";
/// The lifecycle policy file, under the output directory.
pub const POLICY_FILE: &str = "azure/lifecycle-policy.json";
/// The zip deployed to the function app, under the output directory.
pub const PACKAGE_FILE: &str = crate::build::azure::PACKAGE_FILE;

#[derive(Debug, Clone)]
struct Plan {
    group: String,
    location: String,
    storage_account: String,
    container: Option<String>,
    prefix: String,
    expiry_days: Option<u32>,
    vault: String,
    app: String,
    key_secret: Option<String>,
    key_variable: String,
    env: Vec<(String, String)>,
    host_json: String,
}

/// Storage account names: 3-24 lower-case letters and digits.
fn storage_account_name(prefix: &str) -> String {
    prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(24)
        .collect()
}

fn resolve(deployment: &Deployment) -> Result<Plan, CommandError> {
    let settings = Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &RenderOptions::default(),
    )
    .map_err(|error| CommandError::new(error.message, error.hint, 2))?;
    let location = deployment.target.region.clone().ok_or_else(|| {
        CommandError::new(
            format!(
                "target `{}`: `azure-functions` needs a region",
                deployment.target_name
            ),
            format!(
                "add `region: westeurope` (or another) under `targets.{}`",
                deployment.target_name
            ),
            2,
        )
    })?;
    let files = crate::render::render_target(&deployment.config, &deployment.target_name)?;
    let file = |name: &str| {
        files
            .iter()
            .find(|f| f.path.ends_with(name))
            .map(|f| f.contents.clone())
            .unwrap_or_default()
    };
    let prefix = settings.target.resource_prefix.clone();
    let vault: String = prefix
        .chars()
        .take(24)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string();
    let storage = deployment.config.storage.as_ref();
    let storage_account = storage_account_name(&prefix);
    Ok(Plan {
        group: prefix.clone(),
        location,
        storage_account: storage_account.clone(),
        container: storage.map(|s| s.bucket.clone()),
        prefix: storage.map(|s| s.prefix.clone()).unwrap_or_default(),
        expiry_days: storage.and_then(|s| s.expiry_days),
        vault,
        app: prefix,
        key_secret: settings.signing_key.as_ref().map(|s| s.secret_name.clone()),
        key_variable: settings
            .signing_key
            .as_ref()
            .map(|s| s.variable.clone())
            .unwrap_or_else(|| "VGI_SIGNING_KEY".into()),
        env: azure_storage_env(
            settings
                .env
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            storage.map(|_| storage_account).as_deref(),
        ),
        host_json: file("host.json"),
    })
}

/// The service's storage settings pointed at the Blob container `up` makes
/// in `account`: `KIT_STORAGE=azure` and `AZURE_STORAGE_ACCOUNT` (what
/// kit-service's Azure backend reads), bucket and prefix as for S3 and GCS.
/// No `AZURE_STORAGE_KEY`: the service signs with a user delegation key its
/// managed identity requests. An S3 endpoint or region from `storage:` does
/// not apply to the account here.
fn azure_storage_env(env: Vec<(String, String)>, account: Option<&str>) -> Vec<(String, String)> {
    let Some(account) = account else {
        return env;
    };
    let mut out = Vec::with_capacity(env.len() + 1);
    for (name, value) in env {
        match name.as_str() {
            "KIT_STORAGE" => {
                out.push((name, "azure".to_string()));
                out.push(("AZURE_STORAGE_ACCOUNT".to_string(), account.to_string()));
            }
            "KIT_STORAGE_ENDPOINT" | "KIT_STORAGE_REGION" => {}
            _ => out.push((name, value)),
        }
    }
    out
}

impl Plan {
    fn policy(&self) -> String {
        let container = self.container.as_deref().unwrap_or_default();
        let days = self.expiry_days.unwrap_or(1);
        let document = serde_json::json!({
            "rules": [{
                "name": "expire-service-objects",
                "enabled": true,
                "type": "Lifecycle",
                "definition": {
                    "filters": {
                        "blobTypes": ["blockBlob"],
                        "prefixMatch": [format!("{container}/{}", self.prefix)]
                    },
                    "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": days}}}
                }
            }]
        });
        serde_json::to_string_pretty(&document).expect("policy serializes") + "\n"
    }

    fn secret_uri(&self) -> Option<String> {
        self.key_secret
            .as_ref()
            .map(|name| format!("https://{}.vault.azure.net/secrets/{name}/", self.vault))
    }

    /// `NAME=value` app settings: the env and the Key Vault reference (no secret value).
    fn app_settings(&self) -> Vec<String> {
        let mut all: Vec<String> = self.env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        if let Some(uri) = self.secret_uri() {
            all.push(format!(
                "{}=@Microsoft.KeyVault(SecretUri={uri})",
                self.key_variable
            ));
        }
        all
    }
}

/// Desired resources, in creation order.
pub fn desired(deployment: &Deployment) -> Result<Vec<Resource>, CommandError> {
    let plan = resolve(deployment)?;
    let mut resources =
        vec![Resource::new(RESOURCE_GROUP, &plan.group).with("location", &plan.location)];
    let mut account =
        Resource::new(kind::BUCKET, &plan.storage_account).with("sku", "Standard_LRS");
    if let Some(container) = &plan.container {
        account = account.with("container", container).with(
            setting::LIFECYCLE_PREFIX,
            format!("{container}/{}", plan.prefix),
        );
        if let Some(days) = plan.expiry_days {
            account = account.with(setting::LIFECYCLE_EXPIRATION_DAYS, days.to_string());
        }
    }
    resources.push(account);
    resources.push(Resource::new(KEY_VAULT, &plan.vault).with("authorization", "rbac"));
    if let Some(secret) = &plan.key_secret {
        resources.push(Resource::new(
            kind::SECRET,
            format!("{}/{secret}", plan.vault),
        ));
    }
    resources.push(
        Resource::new(kind::FUNCTION, &plan.app)
            .with("runtime", "custom")
            .with(
                "app_settings.sha256",
                sha256_hex(&plan.app_settings().join("\n")),
            )
            .with("host_json.sha256", sha256_hex(&plan.host_json)),
    );
    Ok(resources)
}

pub struct AzureEngine {
    cli: Cli,
    plan: Plan,
    previous: Option<State>,
    output_dir: PathBuf,
    /// The zip `up` deploys (built, or `--package`).
    package: Option<PathBuf>,
    deployment: Deployment,
    /// Whose resource group this is ([`crate::engine::owner`]): everything
    /// the engine makes lives in it, so its [`DEPLOYMENT_TAG`] is what
    /// `up` and `down` check.
    owner: Option<Owner>,
}

/// The tag on the resource group naming the deployment (the owner's tag).
pub const DEPLOYMENT_TAG: &str = "deploy-kit-deployment";

impl AzureEngine {
    pub fn new(
        deployment: &Deployment,
        cli: Cli,
        previous: Option<State>,
        package: Option<PathBuf>,
    ) -> Result<AzureEngine, CommandError> {
        Ok(AzureEngine {
            cli,
            plan: resolve(deployment)?,
            previous,
            output_dir: deployment.output_dir.clone(),
            package,
            deployment: deployment.clone(),
            owner: None,
        })
    }

    /// The engine working for `owner` ([`crate::engine::owner`]).
    pub fn owned_by(mut self, owner: Option<Owner>) -> AzureEngine {
        self.owner = owner;
        self
    }

    /// The group's [`DEPLOYMENT_TAG`]: `None` when the group is gone,
    /// `Some(None)` when it has no such tag.
    #[allow(clippy::option_option)]
    fn group_tag(&self) -> Result<Option<Option<String>>, CommandError> {
        let output = self.cli.run(
            &args([
                "group",
                "show",
                "--name",
                &self.plan.group,
                "--query",
                "tags",
                "--output",
                "json",
            ]),
            None,
            true,
        )?;
        if !output.success {
            return Ok(None);
        }
        let tags: std::collections::BTreeMap<String, String> =
            serde_json::from_str(output.stdout.trim()).unwrap_or_default();
        Ok(Some(tags.get(DEPLOYMENT_TAG).cloned()))
    }
    fn logged_in(&self) -> Result<(), CommandError> {
        if self
            .cli
            .run(&args(["account", "show", "--output", "none"]), None, true)?
            .success
        {
            return Ok(());
        }
        Err(CommandError::new(
            "`az account show` failed: the Azure CLI is not logged in",
            "log in with `az login` (or `az login --service-principal ...` in CI), and pick the subscription with `az account set --subscription ID`",
            2,
        ))
    }

    fn exists(&self, rest: &[&str]) -> Result<bool, CommandError> {
        let mut argv = args(rest);
        argv.extend(args(["--output", "none"]));
        Ok(self.cli.run(&argv, None, true)?.success)
    }

    /// Gives the service principal `principal` `role` on the resource
    /// `show` names (`az ... show`, whose `id` is the scope).
    fn assign_role(&self, principal: &str, role: &str, show: &[&str]) -> Result<(), CommandError> {
        let mut query = show.to_vec();
        query.extend(["--query", "id", "--output", "tsv"]);
        let scope = self.must(&query, None)?;
        self.must(
            &[
                "role",
                "assignment",
                "create",
                "--assignee-object-id",
                principal,
                "--assignee-principal-type",
                "ServicePrincipal",
                "--role",
                role,
                "--scope",
                scope.trim(),
                "--output",
                "none",
            ],
            None,
        )?;
        Ok(())
    }

    fn must(&self, rest: &[&str], stdin: Option<&[u8]>) -> Result<String, CommandError> {
        self.cli.must(
            &args(rest),
            stdin,
            true,
            "read the Azure CLI's message above",
        )
    }

    /// The zip to deploy: the one `up` built with `deploy-kit build`
    /// ([`crate::build::azure`]: `host.json`, `rpc/function.json`, the
    /// checked binary) or was given with `--package`, deployed as it is.
    fn package(&self) -> Result<PathBuf, CommandError> {
        let package = self.package.clone().ok_or_else(|| {
            CommandError::new(
                format!(
                    "target `{}` has no function package to deploy",
                    self.deployment.target_name
                ),
                format!(
                    "run `deploy-kit up {}` (it runs `deploy-kit build` first), or pass `--package ZIP`",
                    self.deployment.target_name
                ),
                2,
            )
        })?;
        if !package.is_file() {
            return Err(CommandError::new(
                format!(
                    "the function package `{}` does not exist",
                    package.display()
                ),
                format!(
                    "build it with `deploy-kit build --target {}`",
                    self.deployment.target_name
                ),
                2,
            ));
        }
        Ok(package)
    }
}

fn write_file(path: &std::path::Path, contents: &[u8]) -> Result<PathBuf, CommandError> {
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
    std::fs::write(path, contents).map_err(failed)?;
    Ok(path.to_path_buf())
}

impl Engine for AzureEngine {
    fn name(&self) -> &'static str {
        "azure"
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
        progress.step("az account", || {
            self.logged_in().map(|()| ((), "logged in".into()))
        })?;
        let plan = &self.plan;
        let (group, account, vault, app) =
            (&plan.group, &plan.storage_account, &plan.vault, &plan.app);
        for want in desired {
            let resource = match want.kind.as_str() {
                RESOURCE_GROUP => {
                    let created = progress.step(&want.address(), || {
                        if let Some(found) = self.group_tag()? {
                            let Some(owner) = &self.owner else {
                                return Ok((false, "exists".into()));
                            };
                            if owner.claim(RESOURCE_GROUP, group, found.as_deref())? == Claim::Ours
                            {
                                return Ok((false, "exists".into()));
                            }
                            let tag = format!("tags.{DEPLOYMENT_TAG}={}", owner.tag);
                            self.must(
                                &[
                                    "group", "update", "--name", group, "--set", &tag, "--output",
                                    "none",
                                ],
                                None,
                            )?;
                            return Ok((false, "exists, tagged as this deployment's".into()));
                        }
                        let tag = self
                            .owner
                            .as_ref()
                            .map(|owner| format!("{DEPLOYMENT_TAG}={}", owner.tag));
                        self.must(
                            &[
                                "group",
                                "create",
                                "--name",
                                group,
                                "--location",
                                &plan.location,
                                "--tags",
                                "managed-by=deploy-kit",
                                tag.as_deref().unwrap_or("managed-by=deploy-kit"),
                                "--output",
                                "none",
                            ],
                            None,
                        )?;
                        Ok((true, "created".into()))
                    })?;
                    mark_created(
                        want.clone(),
                        created,
                        created_before(self.previous.as_ref(), RESOURCE_GROUP, group),
                    )
                }
                kind::BUCKET => {
                    progress.step(&want.address(), || {
                        let outcome = if self.exists(&[
                            "storage",
                            "account",
                            "show",
                            "--name",
                            account,
                            "--resource-group",
                            group,
                        ])? {
                            "exists"
                        } else {
                            self.must(
                                &[
                                    "storage",
                                    "account",
                                    "create",
                                    "--name",
                                    account,
                                    "--resource-group",
                                    group,
                                    "--location",
                                    &plan.location,
                                    "--sku",
                                    "Standard_LRS",
                                    "--kind",
                                    "StorageV2",
                                    "--min-tls-version",
                                    "TLS1_2",
                                    "--allow-blob-public-access",
                                    "false",
                                    "--output",
                                    "none",
                                ],
                                None,
                            )?;
                            "created"
                        };
                        Ok(((), outcome.into()))
                    })?;
                    if let Some(container) = &plan.container {
                        progress.step(&format!("container {container}"), || {
                            self.must(
                                &[
                                    "storage",
                                    "container",
                                    "create",
                                    "--name",
                                    container,
                                    "--account-name",
                                    account,
                                    "--auth-mode",
                                    "login",
                                    "--output",
                                    "none",
                                ],
                                None,
                            )?;
                            Ok(((), "ensured".into()))
                        })?;
                        let policy = write_file(
                            &self.output_dir.join(POLICY_FILE),
                            plan.policy().as_bytes(),
                        )?;
                        let policy_argument = format!("@{}", policy.display());
                        progress.step(
                            &format!("lifecycle policy {container}/{}", plan.prefix),
                            || {
                                self.must(
                                    &[
                                        "storage",
                                        "account",
                                        "management-policy",
                                        "create",
                                        "--account-name",
                                        account,
                                        "--resource-group",
                                        group,
                                        "--policy",
                                        &policy_argument,
                                        "--output",
                                        "none",
                                    ],
                                    None,
                                )?;
                                Ok(((), "applied".into()))
                            },
                        )?;
                    }
                    want.clone()
                }
                KEY_VAULT => {
                    progress.step(&want.address(), || {
                        if self.exists(&[
                            "keyvault",
                            "show",
                            "--name",
                            vault,
                            "--resource-group",
                            group,
                        ])? {
                            return Ok(((), "exists".into()));
                        }
                        self.must(
                            &[
                                "keyvault",
                                "create",
                                "--name",
                                vault,
                                "--resource-group",
                                group,
                                "--location",
                                &plan.location,
                                "--enable-rbac-authorization",
                                "true",
                                "--output",
                                "none",
                            ],
                            None,
                        )?;
                        Ok(((), "created".into()))
                    })?;
                    want.clone()
                }
                kind::SECRET => {
                    let name = plan.key_secret.clone().unwrap_or_default();
                    progress.step(&want.address(), || {
                        if self.exists(&[
                            "keyvault",
                            "secret",
                            "show",
                            "--vault-name",
                            vault,
                            "--name",
                            &name,
                            "--query",
                            "id",
                        ])? {
                            return Ok(((), "exists, key kept".into()));
                        }
                        let key = new_signing_key()?;
                        self.must(
                            &[
                                "keyvault",
                                "secret",
                                "set",
                                "--vault-name",
                                vault,
                                "--name",
                                &name,
                                "--file",
                                "/dev/stdin",
                                "--encoding",
                                "utf-8",
                                "--query",
                                "id",
                                "--output",
                                "none",
                            ],
                            Some(key.as_bytes()),
                        )?;
                        Ok(((), "created with a new key".into()))
                    })?;
                    want.clone()
                }
                _ => {
                    progress.step(&want.address(), || {
                        if self.exists(&[
                            "functionapp",
                            "show",
                            "--name",
                            app,
                            "--resource-group",
                            group,
                        ])? {
                            return Ok(((), "exists".into()));
                        }
                        self.must(
                            &[
                                "functionapp",
                                "create",
                                "--name",
                                app,
                                "--resource-group",
                                group,
                                "--storage-account",
                                account,
                                "--consumption-plan-location",
                                &plan.location,
                                "--os-type",
                                "Linux",
                                "--runtime",
                                "custom",
                                "--functions-version",
                                "4",
                                "--assign-identity",
                                "[system]",
                                "--https-only",
                                "true",
                                "--output",
                                "none",
                            ],
                            None,
                        )?;
                        Ok(((), "created".into()))
                    })?;
                    let principal =
                        progress.step(&format!("{} key vault access", want.address()), || {
                            let principal = self.must(
                                &[
                                    "functionapp",
                                    "identity",
                                    "show",
                                    "--name",
                                    app,
                                    "--resource-group",
                                    group,
                                    "--query",
                                    "principalId",
                                    "--output",
                                    "tsv",
                                ],
                                None,
                            )?;
                            self.assign_role(
                                principal.trim(),
                                "Key Vault Secrets User",
                                &[
                                    "keyvault",
                                    "show",
                                    "--name",
                                    vault,
                                    "--resource-group",
                                    group,
                                ],
                            )?;
                            Ok((principal.trim().to_string(), "granted".into()))
                        })?;
                    if plan.container.is_some() {
                        // The function signs its SAS URLs with a user delegation
                        // key its identity requests: no account key anywhere.
                        progress.step(&format!("{} storage access", want.address()), || {
                            self.assign_role(
                                &principal,
                                STORAGE_ROLE,
                                &[
                                    "storage",
                                    "account",
                                    "show",
                                    "--name",
                                    account,
                                    "--resource-group",
                                    group,
                                ],
                            )?;
                            Ok(((), "granted".into()))
                        })?;
                    }
                    progress.step(&format!("{} app settings", want.address()), || {
                        let mut argv: Vec<OsString> = args([
                            "functionapp",
                            "config",
                            "appsettings",
                            "set",
                            "--name",
                            app.as_str(),
                            "--resource-group",
                            group.as_str(),
                            "--output",
                            "none",
                            "--settings",
                        ]);
                        argv.extend(args(plan.app_settings()));
                        self.cli
                            .must(&argv, None, true, "read the Azure CLI's message above")?;
                        Ok(((), format!("{} set", plan.app_settings().len())))
                    })?;
                    let package = self.package()?;
                    progress.step(&format!("{} zip deploy", want.address()), || {
                        let mut argv = args(["functionapp", "deployment", "source", "config-zip", "--name", app.as_str(), "--resource-group", group.as_str(), "--output", "none", "--src"]);
                        argv.push(package.clone().into_os_string());
                        self.cli.must(&argv, None, false, &format!("read the Azure CLI's message above; `az functionapp log deployment show --name {app} --resource-group {group}` has the details"))?;
                        Ok(((), "deployed".into()))
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
        options: DestroyOptions,
        progress: &mut Progress,
        removed: &mut dyn FnMut(&Resource) -> Result<(), CommandError>,
    ) -> Result<Vec<Kept>, CommandError> {
        progress.step("az account", || {
            self.logged_in().map(|()| ((), "logged in".into()))
        })?;
        let group = &self.plan.group;
        // Everything is in the group: its tag says whose it is, checked
        // before anything is deleted.
        if let Some(owner) = &self.owner
            && state.resources.iter().any(|r| r.kind == RESOURCE_GROUP)
            && let Some(found) = self.group_tag()?
        {
            owner.may_delete(RESOURCE_GROUP, group, found.as_deref())?;
        }
        let mut kept: Vec<Kept> = Vec::new();
        for resource in state.resources.iter().rev() {
            let name = resource.name.as_str();
            let delete: Option<Vec<&str>> = match resource.kind.as_str() {
                kind::FUNCTION => Some(vec![
                    "functionapp",
                    "delete",
                    "--name",
                    name,
                    "--resource-group",
                    group,
                ]),
                kind::SECRET => {
                    let (vault, secret) = name.split_once('/').unwrap_or((name, ""));
                    Some(vec![
                        "keyvault",
                        "secret",
                        "delete",
                        "--vault-name",
                        vault,
                        "--name",
                        secret,
                    ])
                }
                KEY_VAULT => Some(vec![
                    "keyvault",
                    "delete",
                    "--name",
                    name,
                    "--resource-group",
                    group,
                ]),
                kind::BUCKET if options.delete_data => Some(vec![
                    "storage",
                    "account",
                    "delete",
                    "--name",
                    name,
                    "--resource-group",
                    group,
                    "--yes",
                ]),
                kind::BUCKET => {
                    kept.push(Kept {
                        resource: resource.clone(),
                        reason: format!("storage account `{name}` may hold data"),
                        command: format!(
                            "deploy-kit down {} --delete-data",
                            self.deployment.target_name
                        ),
                    });
                    None
                }
                RESOURCE_GROUP => {
                    let created = resource
                        .outputs
                        .get(super::CREATED)
                        .is_some_and(|c| c == "true");
                    if created && kept.is_empty() {
                        Some(vec!["group", "delete", "--name", name, "--yes"])
                    } else {
                        kept.push(Kept {
                            resource: resource.clone(),
                            reason: if created {
                                format!("resource group `{name}` still holds what was kept")
                            } else {
                                format!("resource group `{name}` existed before `up`")
                            },
                            command: format!("az group delete --name {name} --yes"),
                        });
                        None
                    }
                }
                _ => None,
            };
            match delete {
                Some(rest) => {
                    progress.step(&resource.address(), || {
                        self.must(&rest, None)?;
                        Ok(((), "deleted".into()))
                    })?;
                    removed(resource)?;
                }
                None => progress.note(&format!("  {}: kept", resource.address())),
            }
        }
        if state.resources.iter().any(|r| r.kind == KEY_VAULT) {
            progress.note("  note: Key Vault soft-deletes vaults and secrets; `az keyvault purge --name VAULT` frees the name");
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_settings_point_at_the_account_with_no_key() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let given = env(&[
            ("KIT_LOG_FORMAT", "json"),
            ("KIT_STORAGE", "s3"),
            ("KIT_STORAGE_BUCKET", "vgi-data"),
            ("KIT_STORAGE_PREFIX", "vgi-rpc/"),
            ("KIT_STORAGE_ENDPOINT", "https://storage.example.com"),
            ("KIT_STORAGE_REGION", "us-east-1"),
            ("KIT_PRESIGN_TTL", "3600"),
        ]);
        assert_eq!(
            azure_storage_env(given.clone(), Some("vgifunc")),
            env(&[
                ("KIT_LOG_FORMAT", "json"),
                ("KIT_STORAGE", "azure"),
                ("AZURE_STORAGE_ACCOUNT", "vgifunc"),
                ("KIT_STORAGE_BUCKET", "vgi-data"),
                ("KIT_STORAGE_PREFIX", "vgi-rpc/"),
                ("KIT_PRESIGN_TTL", "3600"),
            ])
        );
        assert_eq!(azure_storage_env(given.clone(), None), given);
    }

    #[test]
    fn storage_account_names_are_24_lower_case_alphanumerics() {
        assert_eq!(
            storage_account_name("vgi-demo-production"),
            "vgidemoproduction"
        );
        assert_eq!(
            storage_account_name("A-very-long-service-name-for-tests").len(),
            24
        );
    }
}
