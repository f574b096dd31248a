//! `kubernetes` targets through `kubectl`, in the current context.
//!
//! `up`: the namespace (created only when missing, labelled
//! `app.kubernetes.io/managed-by: deploy-kit`); the signing-key Secret,
//! created once from a generated key that reaches `kubectl create -f -` on
//! stdin (not `apply`, which would copy the key into the
//! `last-applied-configuration` annotation); a check that the API-keys Secret
//! exists; each rendered manifest with `kubectl apply -f` (the
//! ServiceMonitor only when the cluster has the prometheus-operator CRD);
//! then `kubectl rollout status` with a timeout.
//!
//! `down`: deletes them newest first (`--ignore-not-found`), the namespace
//! only when it carries the deploy-kit label, and refuses to run in another
//! context than the one `up` recorded.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use base64::Engine as _;

use super::{Cli, args, new_signing_key, sha256_hex};
use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::owner::{Claim, Owner, OwnershipError};
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind};
use crate::render::{RenderOptions, SecretSettings, Settings};
use crate::secrets::store::Secret;

/// Resource kind of the namespace.
pub const NAMESPACE: &str = "namespace";
/// Output: the kubectl context `up` ran in.
pub const CONTEXT: &str = "context";
/// The label on what deploy-kit creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The labels naming the deployment (service, environment, target) on
/// every rendered object (`templates/k8s/`): `up` refuses to take over a
/// Deployment carrying other values, `down` to delete one.
pub const DEPLOYMENT_LABELS: [&str; 3] = [
    "deploy-kit.dev/service",
    "deploy-kit.dev/environment",
    "deploy-kit.dev/target",
];
/// How long `kubectl rollout status` waits.
pub const ROLLOUT_TIMEOUT_SECONDS: u64 = 300;
/// The prometheus-operator API group the ServiceMonitor needs.
const MONITORING_GROUP: &str = "monitoring.coreos.com";

/// A rendered manifest: its file, the kubectl type and the object's name.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: String,
    pub kubectl_type: String,
    pub name: String,
    pub sha256: String,
}

/// `kind:` and `metadata.name` of a rendered manifest (one object per file).
fn kind_and_name(text: &str) -> Option<(String, String)> {
    let mut kind_value = None;
    let mut name = None;
    let mut in_metadata = false;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("kind: ") {
            kind_value = Some(value.trim().to_string());
        }
        if line.starts_with("metadata:") {
            in_metadata = true;
        } else if in_metadata && name.is_none() {
            if let Some(value) = line.strip_prefix("  name: ") {
                name = Some(value.trim().trim_matches('"').to_string());
            } else if !line.starts_with("  ") {
                in_metadata = false;
            }
        }
    }
    Some((kind_value?, name?))
}

/// The fully qualified kubectl type of a kind (`deployment.apps`).
pub fn kubectl_type(kind_value: &str) -> String {
    match kind_value {
        "Deployment" => "deployment.apps".into(),
        "Ingress" => "ingress.networking.k8s.io".into(),
        "PodDisruptionBudget" => "poddisruptionbudget.policy".into(),
        "HorizontalPodAutoscaler" => "horizontalpodautoscaler.autoscaling".into(),
        "ServiceMonitor" => format!("servicemonitor.{MONITORING_GROUP}"),
        other => other.to_ascii_lowercase(),
    }
}

/// Apply order: what others select or scale comes first.
const APPLY_ORDER: &[&str] = &[
    "service.yaml",
    "deployment.yaml",
    "pdb.yaml",
    "hpa.yaml",
    "ingress.yaml",
    "servicemonitor.yaml",
];

#[derive(Debug, Clone)]
struct Plan {
    namespace: String,
    signing_key: Option<SecretSettings>,
    /// Secrets the user provides (API keys): checked, never created.
    provided_secrets: Vec<String>,
    manifests: Vec<Manifest>,
    deployment_name: Option<String>,
}

fn resolve(deployment: &Deployment) -> Result<Plan, CommandError> {
    let settings = Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &RenderOptions::default(),
    )
    .map_err(|error| CommandError::new(error.message, error.hint, 2))?;
    let files = crate::render::render_target(&deployment.config, &deployment.target_name)?;
    let mut manifests = Vec::new();
    for wanted in APPLY_ORDER {
        let Some(file) = files.iter().find(|f| {
            f.path.parent().is_some_and(|p| p.ends_with("k8s")) && f.path.ends_with(wanted)
        }) else {
            continue;
        };
        let (kind_value, name) = kind_and_name(&file.contents).ok_or_else(|| {
            CommandError::new(
                format!("`{}` has no `kind` or `metadata.name`", file.path.display()),
                "report this: a rendered manifest should always have both",
                1,
            )
        })?;
        manifests.push(Manifest {
            file: file.path.display().to_string(),
            kubectl_type: kubectl_type(&kind_value),
            name,
            sha256: sha256_hex(&file.contents),
        });
    }
    let deployment_name = manifests
        .iter()
        .find(|m| m.kubectl_type == "deployment.apps")
        .map(|m| m.name.clone());
    let signing_key = settings.signing_key.clone();
    let provided_secrets = settings
        .secrets
        .iter()
        .map(|s| s.secret_name.clone())
        .filter(|name| Some(name) != signing_key.as_ref().map(|s| &s.secret_name))
        .collect();
    Ok(Plan {
        namespace: settings.target.namespace.clone(),
        signing_key,
        provided_secrets,
        manifests,
        deployment_name,
    })
}

/// `kubectl -n NAMESPACE ARGS...`.
pub fn namespaced(namespace: &str, rest: &[&str]) -> Vec<OsString> {
    let mut all = args(["-n", namespace]);
    all.extend(args(rest));
    all
}

/// The current context, or the error telling how to pick one.
pub fn current_context(cli: &Cli) -> Result<String, CommandError> {
    let output = cli.run(&args(["config", "current-context"]), None, true)?;
    let context = output.stdout.trim().to_string();
    if !output.success || context.is_empty() {
        return Err(CommandError::new(
            "`kubectl` has no current context, so there is no cluster to deploy to",
            "pick one with `kubectl config use-context NAME` (list them with `kubectl config get-contexts`)",
            2,
        ));
    }
    Ok(context)
}

/// The kubectl context `up` recorded in `state`, if any.
pub fn recorded_context(state: &State) -> Option<String> {
    state
        .resources
        .iter()
        .find_map(|r| r.outputs.get(CONTEXT).cloned())
}

/// Refuses to act in another context than the one `up` ran in (`again`
/// is the command to run after switching).
pub fn same_context(
    recorded: Option<&str>,
    current: &str,
    again: &str,
) -> Result<(), CommandError> {
    match recorded {
        Some(recorded) if recorded != current => Err(CommandError::new(
            format!(
                "`up` ran in kubectl context `{recorded}`, and the current context is `{current}`"
            ),
            format!(
                "switch with `kubectl config use-context {recorded}`, then run `{again}` again"
            ),
            2,
        )),
        _ => Ok(()),
    }
}

/// What `deploy-kit secrets rotate` changes and rolls on a Kubernetes
/// target: the same signing-key Secret and Deployment `up` applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    pub namespace: String,
    pub secret_name: String,
    /// The Secret key the pods sign with (`value`).
    pub primary_key: String,
    /// The Secret key of the keys that only verify (`previous`).
    pub verify_key: String,
    pub deployment_name: String,
}

/// Why a Kubernetes target's signing key cannot be rotated or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("target `{target}` has no signing-key Secret to rotate")]
    NoSigningKeySecret { target: String },
    #[error("target `{target}` renders no Deployment to roll")]
    NoDeployment { target: String },
    #[error("`kubectl -n {namespace} get secret {name}` failed, so the signing key cannot be read")]
    Unreadable { namespace: String, name: String },
    #[error(
        "`kubectl get secret` of `{namespace}/{name}` did not answer a Secret as JSON: {detail}"
    )]
    NotASecret {
        namespace: String,
        name: String,
        detail: String,
    },
    #[error("the Secret `{namespace}/{name}` has no key `{key}`")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("key `{key}` of the Secret `{namespace}/{name}` is not base64-encoded text")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("the Secret `{namespace}/{name}` has no staged key to promote")]
    NothingStaged { namespace: String, name: String },
}

impl From<SecretError> for CommandError {
    fn from(error: SecretError) -> CommandError {
        let (hint, exit_code) = match &error {
            SecretError::NoSigningKeySecret { .. } => (
                "set `signing_key.source: secret` (with `secret: k8s:NAME`) for the target; an ephemeral key is new on every start and needs no rotation".to_string(),
                2,
            ),
            SecretError::NoDeployment { .. } => (
                "check that `deploy-kit render target` writes `k8s/deployment.yaml`".to_string(),
                2,
            ),
            SecretError::Unreadable { namespace, name } => (
                format!(
                    "run `deploy-kit up` for the target first (it creates the Secret), and check with `kubectl -n {namespace} get secret {name}` that your context may read it"
                ),
                1,
            ),
            SecretError::NotASecret { .. } => (
                "check that `kubectl` on `PATH` is the real kubectl".to_string(),
                1,
            ),
            SecretError::MissingKey { namespace, name, key } => (
                format!(
                    "the pods read the key from `{key}`; recreate the Secret with it (`kubectl -n {namespace} create secret generic {name} --from-file={key}=FILE`), or delete it and run `deploy-kit up`"
                ),
                1,
            ),
            SecretError::NotText { .. } => (
                "store keys as text (`hex:` and 64 hex digits)".to_string(),
                1,
            ),
            SecretError::NothingStaged { .. } => (
                "stage one first: `deploy-kit secrets rotate --phase stage`".to_string(),
                2,
            ),
        };
        CommandError::new(error.to_string(), hint, exit_code)
    }
}

/// The names `secrets rotate` works on, from the same plan `up` applies.
pub fn rotation_plan(deployment: &Deployment) -> Result<RotationPlan, CommandError> {
    let plan = resolve(deployment)?;
    let target = deployment.target_name.clone();
    let (Some(signing_key), Some(verify)) = (
        &plan.signing_key,
        plan.signing_key
            .as_ref()
            .and_then(|s| s.verify_only.as_ref()),
    ) else {
        return Err(SecretError::NoSigningKeySecret { target }.into());
    };
    let Some(deployment_name) = plan.deployment_name.clone() else {
        return Err(SecretError::NoDeployment { target }.into());
    };
    Ok(RotationPlan {
        namespace: plan.namespace.clone(),
        secret_name: signing_key.secret_name.clone(),
        primary_key: signing_key.key.clone(),
        verify_key: verify.key.clone(),
        deployment_name,
    })
}

/// A Secret as deploy-kit writes it: `up` creates the signing-key Secret
/// and `secrets rotate` replaces it, both with [`SecretObject::manifest`]
/// on kubectl's stdin (never argv, never `apply`, which would copy the keys
/// into the `last-applied-configuration` annotation). `Debug` shows key
/// fingerprints only ([`Secret`]).
#[derive(Debug, Clone)]
pub struct SecretObject {
    pub namespace: String,
    pub name: String,
    /// The Secret's `type` (`Opaque`).
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Set on a replace: the API server refuses it when the Secret changed
    /// since it was read.
    pub resource_version: Option<String>,
    pub data: BTreeMap<String, Secret>,
}

#[derive(serde::Deserialize)]
struct SecretJson {
    metadata: MetadataJson,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataJson {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    resource_version: Option<String>,
}

impl SecretObject {
    /// The object as JSON, data base64-encoded, for `kubectl create|replace -f -`.
    pub fn manifest(&self) -> String {
        let mut metadata = serde_json::json!({
            "name": self.name,
            "namespace": self.namespace,
        });
        if !self.labels.is_empty() {
            metadata["labels"] = serde_json::json!(self.labels);
        }
        if !self.annotations.is_empty() {
            metadata["annotations"] = serde_json::json!(self.annotations);
        }
        if let Some(version) = &self.resource_version {
            metadata["resourceVersion"] = serde_json::json!(version);
        }
        let data: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(key, secret)| {
                (
                    key.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(secret.expose()),
                )
            })
            .collect();
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": self.kind,
            "data": data,
        });
        format!("{object:#}\n")
    }

    /// Parses `kubectl get secret NAME -o json`; the error never quotes the
    /// text, which holds key values.
    pub fn from_json(namespace: &str, name: &str, text: &str) -> Result<SecretObject, SecretError> {
        let parsed: SecretJson =
            serde_json::from_str(text).map_err(|error| SecretError::NotASecret {
                namespace: namespace.to_string(),
                name: name.to_string(),
                detail: format!("line {} column {}", error.line(), error.column()),
            })?;
        let mut data = BTreeMap::new();
        for (key, encoded) in parsed.data {
            let text = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| SecretError::NotText {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    key: key.clone(),
                })?;
            data.insert(key, Secret::new(text));
        }
        Ok(SecretObject {
            namespace: namespace.to_string(),
            name: name.to_string(),
            kind: parsed.kind.unwrap_or_else(|| "Opaque".into()),
            labels: parsed.metadata.labels,
            annotations: parsed.metadata.annotations,
            resource_version: parsed.metadata.resource_version,
            data,
        })
    }
}

/// Desired resources, in creation order: namespace, signing-key Secret, manifests.
pub fn desired(deployment: &Deployment) -> Result<Vec<Resource>, CommandError> {
    let plan = resolve(deployment)?;
    let mut resources = Vec::new();
    if plan.namespace != "default" {
        resources.push(Resource::new(NAMESPACE, &plan.namespace));
    }
    if let Some(secret) = &plan.signing_key {
        resources.push(
            Resource::new(
                kind::SECRET,
                format!("{}/{}", plan.namespace, secret.secret_name),
            )
            .with("type", "Opaque")
            .with("keys", "value"),
        );
    }
    for manifest in &plan.manifests {
        resources.push(
            Resource::new(
                &manifest.kubectl_type,
                format!("{}/{}", plan.namespace, manifest.name),
            )
            .with(super::FILE_SHA256, &manifest.sha256),
        );
    }
    Ok(resources)
}

pub struct KubernetesEngine {
    cli: Cli,
    plan: Plan,
    output_dir: PathBuf,
    target_name: String,
    deployment: Deployment,
    /// What `up` may take over (`--adopt`, the state's records).
    owner: Option<Owner>,
}

impl KubernetesEngine {
    pub fn new(deployment: &Deployment, cli: Cli) -> Result<KubernetesEngine, CommandError> {
        Ok(KubernetesEngine {
            cli,
            plan: resolve(deployment)?,
            output_dir: deployment.output_dir.clone(),
            target_name: deployment.target_name.clone(),
            deployment: deployment.clone(),
            owner: None,
        })
    }

    /// The engine working for `owner` ([`crate::engine::owner`]).
    pub fn owned_by(mut self, owner: Option<Owner>) -> KubernetesEngine {
        self.owner = owner;
        self
    }

    /// The values of [`DEPLOYMENT_LABELS`] this deployment's objects carry.
    fn our_labels(&self) -> [String; 3] {
        [
            self.deployment.config.service.name.clone(),
            self.deployment.config.service.environment.clone(),
            self.target_name.clone(),
        ]
    }

    /// Whose the rendered Deployment is: `None` when it does not exist,
    /// else the `service/environment/target` its labels name (empty parts
    /// for missing labels).
    fn deployment_owner(&self) -> Result<Option<String>, CommandError> {
        let Some(name) = &self.plan.deployment_name else {
            return Ok(None);
        };
        let output = self.cli.run(
            &self.namespaced(&[
                "get",
                "deployment.apps",
                name,
                "-o",
                "jsonpath={.metadata.labels}",
            ]),
            None,
            true,
        )?;
        if !output.success {
            return Ok(None);
        }
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_str(output.stdout.trim()).unwrap_or_default();
        let found: Vec<&str> = DEPLOYMENT_LABELS
            .iter()
            .map(|key| labels.get(*key).map_or("", String::as_str))
            .collect();
        Ok(Some(found.join("/")))
    }

    /// `up`: refuses another deployment's Deployment of the same name
    /// (labels), or one deploy-kit did not make, unless `--adopt` or the
    /// state records it.
    fn check_takeover(&self) -> Result<&'static str, CommandError> {
        let (Some(owner), Some(name)) = (&self.owner, &self.plan.deployment_name) else {
            return Ok("not checked");
        };
        let Some(found) = self.deployment_owner()? else {
            return Ok("new");
        };
        let ours = self.our_labels().join("/");
        let resource = format!("{}/{name}", self.plan.namespace);
        let tag = (found != "//").then_some(found.as_str());
        // Labels name the deployment without the state id: compare them.
        match owner
            .compared_by(ours)
            .claim("deployment.apps", &resource, tag)?
        {
            Claim::Ours => Ok("ours"),
            Claim::Take => Ok("taken over"),
        }
    }
    fn namespaced(&self, rest: &[&str]) -> Vec<OsString> {
        namespaced(&self.plan.namespace, rest)
    }

    fn current_context(&self) -> Result<String, CommandError> {
        current_context(&self.cli)
    }

    fn exists(&self, argv: Vec<OsString>) -> Result<bool, CommandError> {
        Ok(self.cli.run(&argv, None, true)?.success)
    }

    /// Whether the object `get` names carries deploy-kit's managed-by label
    /// (`up` labels what it creates); one that is gone counts as ours.
    fn made_by_deploy_kit(&self, mut get: Vec<OsString>) -> Result<bool, CommandError> {
        let label = format!(
            "jsonpath={{.metadata.labels.{}}}",
            MANAGED_BY_LABEL.replace('.', "\\.")
        );
        get.extend(args(["-o", &label]));
        let owner = self.cli.run(&get, None, true)?;
        Ok(!owner.success || owner.stdout.trim() == "deploy-kit")
    }
}

impl Engine for KubernetesEngine {
    fn name(&self) -> &'static str {
        "kubernetes"
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
        let context = progress.step("kubectl context", || {
            let context = self.current_context()?;
            let shown = format!("`{context}`");
            Ok((context, shown))
        })?;
        progress.step("ownership", || {
            let outcome = self.check_takeover()?;
            Ok(((), outcome.to_string()))
        })?;
        let namespace = &self.plan.namespace;
        for want in desired {
            let mut resource = want.clone();
            resource.outputs.insert(CONTEXT.into(), context.clone());
            match want.kind.as_str() {
                NAMESPACE => {
                    progress.step(&want.address(), || {
                        if self.exists(args(["get", "namespace", namespace, "-o", "name"]))? {
                            return Ok(((), "exists".into()));
                        }
                        let manifest = format!(
                            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels:\n    {MANAGED_BY_LABEL}: deploy-kit\n"
                        );
                        self.cli.must(
                            &args(["create", "-f", "-"]),
                            Some(manifest.as_bytes()),
                            false,
                            "check that your context may create namespaces, or create it yourself",
                        )?;
                        Ok(((), "created".into()))
                    })?;
                }
                kind::SECRET => {
                    let Some(signing_key) = &self.plan.signing_key else {
                        continue;
                    };
                    let name = &signing_key.secret_name;
                    progress.step(&want.address(), || {
                        if self.exists(self.namespaced(&["get", "secret", name, "-o", "name"]))? {
                            return Ok(((), "exists, key kept".into()));
                        }
                        let secret = SecretObject {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            kind: "Opaque".into(),
                            labels: BTreeMap::from([(
                                MANAGED_BY_LABEL.to_string(),
                                "deploy-kit".to_string(),
                            )]),
                            annotations: BTreeMap::new(),
                            resource_version: None,
                            data: BTreeMap::from([(
                                signing_key.key.clone(),
                                Secret::new(new_signing_key()?),
                            )]),
                        };
                        self.cli.must(
                            &args(["create", "-f", "-"]),
                            Some(secret.manifest().as_bytes()),
                            false,
                            "check that your context may create Secrets in the namespace",
                        )?;
                        Ok(((), "created with a new key".into()))
                    })?;
                    for provided in &self.plan.provided_secrets {
                        progress.step(&format!("secret/{namespace}/{provided} (yours)"), || {
                            if self.exists(self.namespaced(&["get", "secret", provided, "-o", "name"]))? {
                                return Ok(((), "exists".into()));
                            }
                            Err(CommandError::new(
                                format!("the Secret `{provided}` in namespace `{namespace}` does not exist, and the Deployment mounts it"),
                                format!("create it with `kubectl -n {namespace} create secret generic {provided} --from-file=value=FILE`, then run `deploy-kit up {}` again", self.target_name),
                                1,
                            ))
                        })?;
                    }
                }
                _ => {
                    let Some(manifest) = self.plan.manifests.iter().find(|m| {
                        m.kubectl_type == want.kind
                            && want.name == format!("{namespace}/{}", m.name)
                    }) else {
                        continue;
                    };
                    if manifest.kubectl_type.ends_with(MONITORING_GROUP) {
                        let groups = self.cli.run(
                            &args([
                                "api-resources",
                                &format!("--api-group={MONITORING_GROUP}"),
                                "-o",
                                "name",
                            ]),
                            None,
                            true,
                        )?;
                        if !groups
                            .stdout
                            .lines()
                            .any(|l| l.trim() == format!("servicemonitors.{MONITORING_GROUP}"))
                        {
                            progress.note(&format!(
                                "  {}: skipped, the cluster has no prometheus-operator `ServiceMonitor` CRD (install the operator, then run `up` again)",
                                want.address()
                            ));
                            continue;
                        }
                    }
                    let path = self.output_dir.join(&manifest.file);
                    progress.step(&want.address(), || {
                        self.cli.must(
                            &[OsString::from("apply"), OsString::from("-f"), path.into_os_string()],
                            None,
                            false,
                            "read kubectl's message above; `deploy-kit render target` rewrites the files",
                        )?;
                        Ok(((), "applied".into()))
                    })?;
                    resource
                        .outputs
                        .insert("file".into(), manifest.file.clone());
                }
            }
            made(resource)?;
        }
        if let Some(name) = &self.plan.deployment_name {
            progress.step(&format!("rollout deployment/{name}"), || {
                self.cli.must(
                    &self.namespaced(&[
                        "rollout",
                        "status",
                        &format!("deployment/{name}"),
                        &format!("--timeout={ROLLOUT_TIMEOUT_SECONDS}s"),
                    ]),
                    None,
                    false,
                    &format!("see why with `kubectl -n {namespace} describe deployment/{name}` and `kubectl -n {namespace} logs deployment/{name}`"),
                )?;
                Ok(((), "rolled out".into()))
            })?;
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
        let context = progress.step("kubectl context", || {
            let context = self.current_context()?;
            let shown = format!("`{context}`");
            Ok((context, shown))
        })?;
        same_context(recorded_context(state).as_deref(), &context, "down")?;
        if let Some(name) = &self.plan.deployment_name
            && let Some(found) = self.deployment_owner()?
        {
            let ours = self.our_labels().join("/");
            if found != ours {
                return Err(OwnershipError::NotOurs {
                    kind: "deployment.apps".into(),
                    name: format!("{}/{name}", self.plan.namespace),
                    found: format!("`{found}`"),
                    ours,
                }
                .into());
            }
        }
        let mut kept = Vec::new();
        for resource in state.resources.iter().rev() {
            let (namespace, name) = resource
                .name
                .split_once('/')
                .unwrap_or(("", resource.name.as_str()));
            match resource.kind.as_str() {
                NAMESPACE
                    if !self.made_by_deploy_kit(args(["get", "namespace", &resource.name]))? =>
                {
                    progress.note(&format!(
                        "  {}: kept, deploy-kit did not create it",
                        resource.address()
                    ));
                    kept.push(Kept {
                        resource: resource.clone(),
                        reason: format!(
                            "namespace `{}` was not created by deploy-kit",
                            resource.name
                        ),
                        command: format!("kubectl delete namespace {}", resource.name),
                    });
                }
                NAMESPACE => {
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args(["delete", "namespace", &resource.name, "--ignore-not-found"]),
                            None,
                            false,
                            "read kubectl's message above",
                        )?;
                        Ok(((), "deleted".into()))
                    })?;
                }
                // A signing-key Secret that existed before `up` is the user's.
                kind::SECRET
                    if !self
                        .made_by_deploy_kit(args(["-n", namespace, "get", "secret", name]))? =>
                {
                    progress.note(&format!(
                        "  {}: kept, it is yours (deploy-kit did not create it)",
                        resource.address()
                    ));
                }
                other => {
                    let kubectl_kind = if other == kind::SECRET {
                        "secret"
                    } else {
                        other
                    };
                    progress.step(&resource.address(), || {
                        self.cli.must(
                            &args([
                                "-n",
                                namespace,
                                "delete",
                                kubectl_kind,
                                name,
                                "--ignore-not-found",
                            ]),
                            None,
                            false,
                            "read kubectl's message above",
                        )?;
                        Ok(((), "deleted".into()))
                    })?;
                }
            }
            removed(resource)?;
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kind_and_name_of_a_rendered_manifest() {
        let text = "# comment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: vgi\n  namespace: ns\nspec:\n  template:\n    metadata:\n      name: other\n";
        assert_eq!(
            kind_and_name(text),
            Some(("Deployment".into(), "vgi".into()))
        );
        assert_eq!(
            kubectl_type("ServiceMonitor"),
            "servicemonitor.monitoring.coreos.com"
        );
        assert_eq!(kubectl_type("Service"), "service");
    }

    #[test]
    fn a_secret_manifest_reads_back_as_the_same_secret() {
        let secret = SecretObject {
            namespace: "ns".into(),
            name: "vgi-signing-key".into(),
            kind: "Opaque".into(),
            labels: BTreeMap::from([(MANAGED_BY_LABEL.into(), "deploy-kit".into())]),
            annotations: BTreeMap::from([("note".into(), "kept".into())]),
            resource_version: Some("42".into()),
            data: BTreeMap::from([
                ("value".into(), Secret::new("hex:00")),
                ("previous".into(), Secret::new("hex:01,hex:02")),
            ]),
        };
        let manifest = secret.manifest();
        assert!(!manifest.contains("hex:"), "values are base64: {manifest}");
        let again = SecretObject::from_json("ns", "vgi-signing-key", &manifest).unwrap();
        assert_eq!(again.labels, secret.labels);
        assert_eq!(again.annotations, secret.annotations);
        assert_eq!(again.resource_version.as_deref(), Some("42"));
        assert_eq!(again.kind, "Opaque");
        assert_eq!(again.data["value"].expose(), "hex:00");
        assert_eq!(again.data["previous"].expose(), "hex:01,hex:02");
        let error = SecretObject::from_json("ns", "s", "{\"data\": {\"value\": \"hex:00\"}}");
        assert!(error.is_err());
    }
}
