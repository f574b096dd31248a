//! Applying the GCP engine's resources (feature `gcp`), and the `up` and
//! `down` drivers that keep the state file.
//!
//! Every step reads the live resource first and writes only what differs, so
//! a second `up` changes nothing. The bucket is read back after a write and
//! the lifecycle rules and CORS compared again: a store that silently drops
//! a setting fails `up` instead of leaving objects that never expire.
//!
//! Ownership: deploy-kit owns, on a bucket, the lifecycle rules on exactly
//! `storage.prefix` with the two actions it writes, and the CORS entry with
//! its own method and header lists; other rules and entries are kept. A
//! bucket it created carries the label `managed-by: deploy-kit`, and `down`
//! deletes only such buckets.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::iam::{IAM_ENDPOINT, IamApi, is_ours};
use super::{
    CORS_MAX_AGE_SECONDS, CORS_METHOD_LIST, CORS_RESPONSE_HEADERS, GRANT, GcpSettings, Grant,
    MANAGED_BY, SecretSettings,
};
use crate::CommandError;
use crate::config::DeployConfig;
use crate::deployment::Deployment;
use crate::engine::owner::{Claim, Owner};
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind};
use crate::gcp::run::{RunApi, ServiceName};
use crate::gcp::secrets::{SecretName, SecretsApi, new_signing_key};
use crate::gcp::storage::{
    ABORT_MULTIPART, CorsSpec, DELETE, LifecycleRuleSpec, StorageApi, cors_of, lifecycle_of,
};
use crate::gcp::{Client, Credentials, GcpError};

/// Where the Secret Manager calls go (tests: a fake on 127.0.0.1).
pub const SECRET_MANAGER_ENDPOINT_VAR: &str = "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT";
/// Where the Cloud Run calls go (tests: a fake on 127.0.0.1).
pub const CLOUD_RUN_ENDPOINT_VAR: &str = "DEPLOY_KIT_CLOUD_RUN_ENDPOINT";
/// Where the IAM (service account) calls go (tests: a fake on 127.0.0.1).
pub const IAM_ENDPOINT_VAR: &str = "DEPLOY_KIT_IAM_ENDPOINT";

/// The GCP engine: settings and one client per API, sharing one credential.
#[derive(Debug)]
pub struct GcpEngine {
    settings: GcpSettings,
    storage: StorageApi,
    secrets: SecretsApi,
    run: RunApi,
    iam: IamApi,
    /// Whose resources these are (`up`, `down`): the bucket, the key secret
    /// and the service carry [`ID_LABEL`]; `None` checks nothing.
    owner: Option<Owner>,
}

/// The label holding the state id ([`crate::engine::owner`]): GCP label
/// values cannot hold `service/environment/target@id`.
pub const ID_LABEL: &str = "deploy-kit-id";

/// A `GcpError` as a command error with the hint that fits it.
fn command_error(error: GcpError) -> CommandError {
    let hint = match &error {
        GcpError::Credentials(_) => {
            "set `GOOGLE_APPLICATION_CREDENTIALS` to a service-account key file, or run `gcloud auth application-default login`".to_string()
        }
        GcpError::Status { status: 401 | 403, .. } => {
            "the credentials need roles/storage.admin, roles/secretmanager.admin, roles/run.admin, roles/iam.serviceAccountAdmin and roles/iam.serviceAccountUser on the project (and the APIs enabled: `gcloud services enable storage.googleapis.com secretmanager.googleapis.com run.googleapis.com iam.googleapis.com iamcredentials.googleapis.com`)".to_string()
        }
        GcpError::Status { status: 409, action, .. } if action.starts_with("create bucket") => {
            "bucket names are global across Google Cloud: pick another `storage.bucket`".to_string()
        }
        GcpError::Unreachable { .. } => {
            "check the network, and `STORAGE_EMULATOR_HOST`, `DEPLOY_KIT_SECRET_MANAGER_ENDPOINT`, `DEPLOY_KIT_CLOUD_RUN_ENDPOINT` or `DEPLOY_KIT_IAM_ENDPOINT` if set".to_string()
        }
        _ => "run `deploy-kit up` again; every step is idempotent".to_string(),
    };
    CommandError::new(error.to_string(), hint, 1)
}

fn endpoint_override(env: &dyn Fn(&str) -> Option<String>, name: &str, default: &str) -> String {
    env(name)
        .filter(|v| !v.trim().is_empty())
        .map(|v| crate::gcp::endpoint_from_override(&v))
        .unwrap_or_else(|| default.to_string())
}

impl GcpEngine {
    /// Resolves endpoints and credentials (credentials only when some
    /// endpoint is https: emulators and fakes need none).
    pub fn new(
        settings: GcpSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GcpEngine, CommandError> {
        let storage_endpoint = StorageApi::endpoint(
            settings.bucket.as_ref().and_then(|b| b.endpoint.as_deref()),
            env,
        );
        let secrets_endpoint = endpoint_override(
            env,
            SECRET_MANAGER_ENDPOINT_VAR,
            crate::gcp::SECRET_MANAGER_ENDPOINT,
        );
        let run_endpoint =
            endpoint_override(env, CLOUD_RUN_ENDPOINT_VAR, crate::gcp::CLOUD_RUN_ENDPOINT);
        let iam_endpoint = endpoint_override(env, IAM_ENDPOINT_VAR, IAM_ENDPOINT);
        let needs_token = [
            &storage_endpoint,
            &secrets_endpoint,
            &run_endpoint,
            &iam_endpoint,
        ]
        .iter()
        .any(|e| !e.starts_with("http://"));
        let credentials = if needs_token {
            Credentials::discover(env).map_err(command_error)?
        } else {
            None
        };
        let client = Arc::new(Client::new(credentials));
        Ok(GcpEngine {
            settings,
            storage: StorageApi::new(client.clone(), &storage_endpoint),
            secrets: SecretsApi::new(client.clone(), &secrets_endpoint),
            iam: IamApi::new(
                client.clone(),
                &iam_endpoint,
                &secrets_endpoint,
                &storage_endpoint,
            ),
            run: RunApi::new(client, &run_endpoint),
            owner: None,
        })
    }

    /// The engine working for `owner` ([`crate::engine::owner`]).
    pub fn owned_by(mut self, owner: Option<Owner>) -> GcpEngine {
        self.owner = owner;
        self
    }

    /// The labels of what this engine makes.
    fn labels(&self) -> Value {
        let mut labels = json!({ MANAGED_BY.0: MANAGED_BY.1 });
        if let Some(owner) = &self.owner {
            labels[ID_LABEL] = owner.id.clone().into();
        }
        labels
    }

    /// `current`'s labels with this deployment's added.
    fn merged_labels(&self, current: &Value) -> Value {
        let mut labels = current.get("labels").cloned().unwrap_or_else(|| json!({}));
        if let (Some(labels), Some(ours)) = (labels.as_object_mut(), self.labels().as_object()) {
            labels.extend(ours.clone());
        }
        labels
    }

    /// Refuses `kind` `name` (labelled as in `current`) when it is another
    /// deployment's; `true` when it must be labelled as this one's.
    fn claim(&self, kind: &str, name: &str, current: &Value) -> Result<bool, CommandError> {
        let Some(owner) = &self.owner else {
            return Ok(false);
        };
        let found = current
            .pointer(&format!("/labels/{ID_LABEL}"))
            .and_then(Value::as_str);
        let claim = owner
            .compared_by(owner.id.clone())
            .claim(kind, name, found)?;
        Ok(claim == Claim::Take)
    }

    /// Whether `down` may delete `kind` `name` (labelled as in `current`).
    fn may_delete(&self, kind: &str, name: &str, current: &Value) -> Result<(), CommandError> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        let found = current
            .pointer(&format!("/labels/{ID_LABEL}"))
            .and_then(Value::as_str);
        Ok(owner
            .compared_by(owner.id.clone())
            .may_delete(kind, name, found)?)
    }

    /// Before `down` deletes anything: the bucket, the key secret and the
    /// service that still exist carry this state's id.
    fn check_deletable(&self, state: &State) -> Result<(), CommandError> {
        if self.owner.is_none() {
            return Ok(());
        }
        for resource in &state.resources {
            let current = match resource.kind.as_str() {
                kind::BUCKET => self
                    .storage
                    .get_bucket(&resource.name)
                    .map_err(command_error)?,
                kind::SECRET => match secret_name(&resource.name) {
                    Some(name) => self.secrets.get(&name).map_err(command_error)?,
                    None => None,
                },
                kind::FUNCTION => match service_name(&resource.name) {
                    Some(name) => self.run.get(&name).map_err(command_error)?,
                    None => None,
                },
                _ => None,
            };
            if let Some(current) = current {
                self.may_delete(&resource.kind, &resource.name, &current)?;
            }
        }
        Ok(())
    }

    /// Shortens Cloud Run's operation polling and IAM's retries (tests).
    pub fn set_poll_interval(&mut self, interval: std::time::Duration) {
        self.run.poll_interval = interval;
        self.iam.retry_interval = interval;
    }

    /// The runtime account: created once, described as deploy-kit's.
    fn apply_account(&self, resource: &Resource) -> Result<(Resource, String), CommandError> {
        let (Some(runtime), Some(service)) = (&self.settings.runtime, &self.settings.service)
        else {
            return Ok((resource.clone(), "unchanged".into()));
        };
        let email = runtime.email();
        let mut outcome = "unchanged";
        if self
            .iam
            .get_account(&runtime.project, &email)
            .map_err(command_error)?
            .is_none()
        {
            match self
                .iam
                .create_account(&runtime.project, &runtime.account_id, service)
            {
                Ok(_) => outcome = "created",
                // Made by a concurrent run between our GET and POST: use it.
                Err(error) if error.is_conflict() => {}
                Err(error) => return Err(command_error(error)),
            }
        }
        let mut made = resource.clone();
        made.outputs.insert("email".into(), email);
        Ok((made, outcome.to_string()))
    }

    /// One binding, written only when the policy lacks it.
    fn apply_grant(&self, resource: &Resource) -> Result<(Resource, String), CommandError> {
        let grant = Grant::of(resource).ok_or_else(|| {
            CommandError::new(
                format!("grant `{}` has no resource, role or member", resource.name),
                "this is a bug in deploy-kit",
                1,
            )
        })?;
        let outcome = match self.iam.ensure(&grant).map_err(command_error)? {
            true => format!("granted `{}` to `{}`", grant.role, grant.member),
            false => "unchanged".to_string(),
        };
        Ok((resource.clone(), outcome))
    }

    fn destroy_grant(&self, resource: &Resource) -> Result<String, CommandError> {
        let Some(grant) = Grant::of(resource) else {
            return Ok("skipped (not a grant)".into());
        };
        match self.iam.revoke(&grant).map_err(command_error)? {
            true => Ok("revoked".into()),
            false => Ok("already gone".into()),
        }
    }

    fn destroy_account(&self, resource: &Resource) -> Result<(String, Option<Kept>), CommandError> {
        let parts: Vec<&str> = resource.name.split('/').collect();
        let ["projects", project, "serviceAccounts", email] = parts.as_slice() else {
            return Ok(("skipped (not a service account name)".into(), None));
        };
        let Some(account) = self
            .iam
            .get_account(project, email)
            .map_err(command_error)?
        else {
            return Ok(("already gone".into(), None));
        };
        if !is_ours(&account) {
            return Ok((
                "kept".into(),
                Some(Kept {
                    resource: resource.clone(),
                    reason: format!(
                        "service account `{email}` was not created by deploy-kit (its description does not start with `{}`)",
                        super::iam::ACCOUNT_MARKER
                    ),
                    command: format!("gcloud iam service-accounts delete {email}"),
                }),
            ));
        }
        match self
            .iam
            .delete_account(project, email)
            .map_err(command_error)?
        {
            true => Ok(("deleted".into(), None)),
            false => Ok(("already gone".into(), None)),
        }
    }

    /// The lifecycle rules and CORS entries deploy-kit wants on the bucket.
    fn wanted_bucket_settings(&self) -> (Vec<LifecycleRuleSpec>, Vec<CorsSpec>) {
        let Some(bucket) = &self.settings.bucket else {
            return (Vec::new(), Vec::new());
        };
        let mut rules = Vec::new();
        for (action, days) in [
            (DELETE, bucket.expiry_days),
            (ABORT_MULTIPART, bucket.abort_multipart_days),
        ] {
            if let Some(days) = days {
                rules.push(LifecycleRuleSpec {
                    action: action.to_string(),
                    age_days: Some(days),
                    matches_prefix: vec![bucket.prefix.clone()],
                    narrowed: false,
                });
            }
        }
        let cors = if bucket.cors_origins.is_empty() {
            Vec::new()
        } else {
            vec![CorsSpec {
                origins: bucket.cors_origins.clone(),
                methods: CORS_METHOD_LIST.iter().map(|m| m.to_string()).collect(),
                response_headers: CORS_RESPONSE_HEADERS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
                max_age_seconds: Some(CORS_MAX_AGE_SECONDS),
            }]
        };
        (rules, cors)
    }

    /// The bucket PATCH that makes `current` match: `None` when it does.
    fn bucket_patch(&self, current: &Value, prefix: &str, created: bool) -> Option<Value> {
        let (wanted_rules, wanted_cors) = self.wanted_bucket_settings();
        let mut patch = serde_json::Map::new();

        let raw_rules: Vec<Value> = current
            .pointer("/lifecycle/rule")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut managed: Vec<LifecycleRuleSpec> = lifecycle_of(current)
            .into_iter()
            .filter(|r| r.is_managed_for(prefix))
            .collect();
        managed.sort();
        let mut wanted_sorted = wanted_rules.clone();
        wanted_sorted.sort();
        if managed != wanted_sorted {
            let mut rules: Vec<Value> = raw_rules
                .into_iter()
                .filter(|raw| !LifecycleRuleSpec::from_json(raw).is_managed_for(prefix))
                .collect();
            rules.extend(wanted_rules.iter().map(LifecycleRuleSpec::to_json));
            patch.insert("lifecycle".into(), json!({ "rule": rules }));
        }

        let ours = |entry: &CorsSpec| {
            entry.methods == CORS_METHOD_LIST && entry.response_headers == CORS_RESPONSE_HEADERS
        };
        let current_cors = cors_of(current);
        let current_ours: Vec<&CorsSpec> = current_cors.iter().filter(|e| ours(e)).collect();
        if current_ours != wanted_cors.iter().collect::<Vec<_>>() {
            let raw_cors: Vec<Value> = current
                .get("cors")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut entries: Vec<Value> = raw_cors
                .into_iter()
                .filter(|raw| !ours(&CorsSpec::from_json(raw)))
                .collect();
            entries.extend(wanted_cors.iter().map(CorsSpec::to_json));
            patch.insert("cors".into(), entries.into());
        }

        if created
            && current
                .pointer(&format!("/labels/{}", MANAGED_BY.0))
                .is_none()
        {
            // Real GCS keeps the labels of the insert; the emulator needs the PATCH.
            patch.insert("labels".into(), self.labels());
        }
        (!patch.is_empty()).then_some(Value::Object(patch))
    }

    fn apply_bucket(&self, resource: &Resource) -> Result<(Resource, String), CommandError> {
        let name = &resource.name;
        let prefix = self
            .settings
            .bucket
            .as_ref()
            .map(|b| b.prefix.clone())
            .unwrap_or_default();
        let existing = self.storage.get_bucket(name).map_err(command_error)?;
        let created = existing.is_none();
        let current = match existing {
            Some(bucket) => bucket,
            None => self
                .storage
                .insert_bucket(
                    &self.settings.project,
                    &json!({
                        "name": name,
                        "location": self.settings.region,
                        "storageClass": "STANDARD",
                        "labels": self.labels(),
                        "iamConfiguration": {
                            "uniformBucketLevelAccess": {"enabled": true},
                            "publicAccessPrevention": "enforced",
                        },
                    }),
                )
                .map_err(command_error)?,
        };
        let mut outcome = if created { "created" } else { "unchanged" }.to_string();
        let labelled = !created && self.claim(kind::BUCKET, name, &current)?;
        if labelled {
            self.storage
                .patch_bucket(name, &json!({"labels": self.merged_labels(&current)}))
                .map_err(command_error)?;
        }
        if let Some(patch) = self.bucket_patch(&current, &prefix, created) {
            let fields: Vec<&str> = patch
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if !created {
                outcome = format!("updated ({})", fields.join(", "));
            }
            self.storage
                .patch_bucket(name, &patch)
                .map_err(command_error)?;
            let after = self
                .storage
                .get_bucket(name)
                .map_err(command_error)?
                .ok_or_else(|| {
                    CommandError::new(
                        format!("bucket `{name}` disappeared right after its update"),
                        "run `deploy-kit up` again",
                        1,
                    )
                })?;
            if self.bucket_patch(&after, &prefix, false).is_some() {
                return Err(CommandError::new(
                    format!(
                        "bucket `{name}` at `{}` did not keep the lifecycle rules or CORS deploy-kit set",
                        self.storage.endpoint_url()
                    ),
                    "check that the store supports bucket lifecycle and CORS through the JSON API; `deploy-kit doctor --online` shows what it holds",
                    1,
                ));
            }
        }
        if labelled {
            outcome.push_str(", labelled as this deployment's");
        }
        let mut made = resource.clone();
        made.outputs
            .insert("endpoint".into(), self.storage.endpoint_url().to_string());
        made.outputs.insert("url".into(), format!("gs://{name}"));
        Ok((made, outcome))
    }

    fn apply_secret(&self, resource: &Resource) -> Result<(Resource, String), CommandError> {
        let Some(SecretSettings { project, secret }) = &self.settings.secret else {
            return Ok((resource.clone(), "unchanged".into()));
        };
        let name = SecretName {
            project: project.clone(),
            secret: secret.clone(),
        };
        let mut outcome = "unchanged";
        let current = self.secrets.get(&name).map_err(command_error)?;
        if let Some(current) = &current
            && self.claim(kind::SECRET, &name.resource(), current)?
        {
            self.secrets
                .set_labels(&name, &self.merged_labels(current))
                .map_err(command_error)?;
            outcome = "labelled as this deployment's";
        }
        if current.is_none() {
            match self.secrets.create(&name, &self.labels()) {
                Ok(_) => outcome = "created",
                // Made by a concurrent run between our GET and POST: use it.
                Err(error) if error.is_conflict() => {}
                Err(error) => return Err(command_error(error)),
            }
        }
        let mut versions = self
            .secrets
            .enabled_versions(&name)
            .map_err(command_error)?;
        if versions.is_empty() {
            let key = new_signing_key()
                .map_err(|message| CommandError::new(message, "run `deploy-kit up` again", 1))?;
            versions.push(
                self.secrets
                    .add_version(&name, key.as_bytes())
                    .map_err(command_error)?,
            );
            outcome = if outcome == "created" {
                "created, with a new signing key"
            } else {
                "new signing key added (the secret had no enabled version)"
            };
        }
        let mut made = resource.clone();
        if let Some(version) = versions.first() {
            made.outputs.insert("version".into(), version.clone());
        }
        Ok((made, outcome.to_string()))
    }

    fn service_name(&self) -> Option<ServiceName> {
        self.settings.service.as_ref().map(|service| ServiceName {
            project: self.settings.project.clone(),
            region: self.settings.region.clone(),
            service: service.clone(),
        })
    }

    /// The Cloud Run service body.
    pub fn service_body(&self) -> Value {
        let mut env: Vec<Value> = self
            .settings
            .service_env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        if let Some(secret) = &self.settings.secret {
            env.push(json!({
                "name": "VGI_SIGNING_KEY",
                "valueSource": {"secretKeyRef": {"secret": secret.resource(), "version": "latest"}},
            }));
        }
        if let Some(keys) = &self.settings.api_keys {
            env.push(json!({
                "name": "KIT_API_KEYS",
                "valueSource": {"secretKeyRef": {"secret": keys.resource(), "version": "latest"}},
            }));
        }
        let cloud_run = &self.settings.cloud_run;
        let mut body = json!({
            "labels": self.labels(),
            "ingress": "INGRESS_TRAFFIC_ALL",
            "template": {
                "scaling": {
                    "minInstanceCount": cloud_run.min_instances,
                    "maxInstanceCount": self.settings.instances,
                },
                "maxInstanceRequestConcurrency": cloud_run.concurrency,
                "timeout": format!("{}s", self.settings.timeout_seconds),
                "containers": [{
                    "image": self.settings.image,
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": cloud_run.cpu, "memory": cloud_run.memory}},
                    "env": env,
                }],
            },
        });
        if let Some(runtime) = &self.settings.runtime {
            body["template"]["serviceAccount"] = runtime.email().into();
        }
        body
    }

    fn apply_service(&self, resource: &Resource) -> Result<(Resource, String), CommandError> {
        let Some(name) = self.service_name() else {
            return Ok((resource.clone(), "unchanged".into()));
        };
        let body = self.service_body();
        let current = self.run.get(&name).map_err(command_error)?;
        let (service, mut outcome) = match current {
            None => (
                self.run.create(&name, &body).map_err(command_error)?,
                "created".to_string(),
            ),
            Some(current)
                if !self.claim(kind::FUNCTION, &name.resource(), &current)?
                    && service_summary(&current) == service_summary(&body) =>
            {
                (current, "unchanged".to_string())
            }
            Some(_) => (
                self.run.update(&name, &body).map_err(command_error)?,
                "updated (new revision)".to_string(),
            ),
        };
        if self.settings.public && self.run.allow_public(&name).map_err(command_error)? {
            outcome.push_str(", public");
        }
        let mut made = resource.clone();
        if let Some(uri) = service.get("uri").and_then(Value::as_str) {
            made.outputs.insert("url".into(), uri.to_string());
        }
        Ok((made, outcome))
    }

    fn destroy_bucket(
        &self,
        resource: &Resource,
        options: DestroyOptions,
    ) -> Result<(String, Option<Kept>), CommandError> {
        let name = &resource.name;
        let Some(bucket) = self.storage.get_bucket(name).map_err(command_error)? else {
            return Ok(("already gone".into(), None));
        };
        if self.owner.is_none()
            && bucket.pointer(&format!("/labels/{}", MANAGED_BY.0)) != Some(&json!(MANAGED_BY.1))
        {
            return Ok((
                "kept".into(),
                Some(Kept {
                    resource: resource.clone(),
                    reason: format!(
                        "bucket `{name}` was not created by deploy-kit (no `{}: {}` label)",
                        MANAGED_BY.0, MANAGED_BY.1
                    ),
                    command: format!("gcloud storage rm --recursive gs://{name}"),
                }),
            ));
        }
        let prefix = self
            .settings
            .bucket
            .as_ref()
            .filter(|b| &b.bucket == name)
            .map_or("", |b| b.prefix.as_str());
        let all = self.storage.list_objects(name, "").map_err(command_error)?;
        if !all.is_empty() && !options.delete_data {
            return Ok((
                "kept".into(),
                Some(Kept {
                    resource: resource.clone(),
                    reason: format!("bucket `{name}` holds {} objects", all.len()),
                    command: format!(
                        "deploy-kit down {} --delete-data",
                        self.settings.target_name
                    ),
                }),
            ));
        }
        // `--delete-data` deletes the service's objects (under the prefix) only.
        let objects: Vec<&String> = all.iter().filter(|o| o.starts_with(prefix)).collect();
        for object in &objects {
            match self.storage.delete_object(name, object) {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(command_error(error)),
            }
        }
        if let Some(other) = all.iter().find(|o| !o.starts_with(prefix)) {
            return Ok((
                format!("kept, {} of the service's objects deleted", objects.len()),
                Some(Kept {
                    resource: resource.clone(),
                    reason: format!(
                        "bucket `{name}` holds objects outside the service's prefix `{prefix}` (such as `{other}`), which `--delete-data` does not delete"
                    ),
                    command: format!("gcloud storage rm --recursive gs://{name}"),
                }),
            ));
        }
        match self.storage.delete_bucket(name) {
            Ok(()) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(command_error(error)),
        }
        Ok((
            if objects.is_empty() {
                "deleted".into()
            } else {
                format!("deleted with {} objects", objects.len())
            },
            None,
        ))
    }

    fn destroy_secret(&self, resource: &Resource) -> Result<String, CommandError> {
        let Some(name) = secret_name(&resource.name) else {
            return Ok("skipped (not a secret name)".into());
        };
        match self.secrets.delete(&name) {
            Ok(()) => Ok("deleted".into()),
            Err(error) if error.is_not_found() => Ok("already gone".into()),
            Err(error) => Err(command_error(error)),
        }
    }

    fn destroy_service(&self, resource: &Resource) -> Result<String, CommandError> {
        let Some(name) = service_name(&resource.name) else {
            return Ok("skipped (not a Cloud Run service name)".into());
        };
        match self.run.delete(&name).map_err(command_error)? {
            true => Ok("deleted".into()),
            false => Ok("already gone".into()),
        }
    }
}

/// `projects/P/secrets/S` as a secret name.
fn secret_name(resource: &str) -> Option<SecretName> {
    let (project, secret) = resource
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once("/secrets/"))?;
    Some(SecretName {
        project: project.to_string(),
        secret: secret.to_string(),
    })
}

/// `projects/P/locations/R/services/S` as a Cloud Run service name.
fn service_name(resource: &str) -> Option<ServiceName> {
    let parts: Vec<&str> = resource.split('/').collect();
    let [
        "projects",
        project,
        "locations",
        region,
        "services",
        service,
    ] = parts.as_slice()
    else {
        return None;
    };
    Some(ServiceName {
        project: project.to_string(),
        region: region.to_string(),
        service: service.to_string(),
    })
}

/// The fields of a Cloud Run service deploy-kit sets, in a form that
/// compares equal between what we send and what Google returns (which adds
/// many fields of its own).
pub fn service_summary(service: &Value) -> Vec<(String, String)> {
    let template = service.get("template").cloned().unwrap_or(Value::Null);
    let container = template
        .pointer("/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let text = |value: Option<&Value>| match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let mut summary = vec![
        ("image".to_string(), text(container.get("image"))),
        ("ingress".to_string(), text(service.get("ingress"))),
        (
            "max_instances".to_string(),
            text(template.pointer("/scaling/maxInstanceCount")),
        ),
        // Google leaves out a zero minimum.
        ("min_instances".to_string(), {
            let min = text(template.pointer("/scaling/minInstanceCount"));
            if min.is_empty() { "0".to_string() } else { min }
        }),
        (
            "concurrency".to_string(),
            text(template.get("maxInstanceRequestConcurrency")),
        ),
        (
            "cpu".to_string(),
            text(container.pointer("/resources/limits/cpu")),
        ),
        (
            "memory".to_string(),
            text(container.pointer("/resources/limits/memory")),
        ),
        (
            "service_account".to_string(),
            text(template.get("serviceAccount")),
        ),
        ("timeout".to_string(), text(template.get("timeout"))),
    ];
    let mut env: Vec<(String, String)> = container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| {
            let name = text(entry.get("name"));
            let value = match entry.pointer("/valueSource/secretKeyRef") {
                Some(reference) => {
                    let secret = text(reference.get("secret"));
                    let short = secret.rsplit('/').next().unwrap_or_default().to_string();
                    format!("secret:{short}:{}", text(reference.get("version")))
                }
                None => text(entry.get("value")),
            };
            (format!("env.{name}"), value)
        })
        .collect();
    env.sort();
    summary.extend(env);
    summary
}

impl Engine for GcpEngine {
    fn name(&self) -> &'static str {
        "gcp"
    }

    fn desired(&self) -> Result<Vec<Resource>, CommandError> {
        Ok(self.settings.desired())
    }

    fn apply(
        &self,
        desired: &[Resource],
        progress: &mut Progress,
        made: &mut dyn FnMut(Resource) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        for resource in desired {
            let resource = progress.step(&resource.address(), || match resource.kind.as_str() {
                kind::BUCKET => self.apply_bucket(resource),
                kind::SECRET => self.apply_secret(resource),
                kind::ROLE => self.apply_account(resource),
                GRANT => self.apply_grant(resource),
                kind::FUNCTION => self.apply_service(resource),
                other => Err(CommandError::new(
                    format!("the GCP engine has no resource kind `{other}`"),
                    "this is a bug in deploy-kit",
                    1,
                )),
            })?;
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
        progress.step("ownership", || {
            self.check_deletable(state)?;
            Ok(((), "every resource carries this state's id".to_string()))
        })?;
        let mut kept = Vec::new();
        for resource in state.resources.iter().rev() {
            let left = progress.step(&resource.address(), || match resource.kind.as_str() {
                kind::BUCKET => self
                    .destroy_bucket(resource, options)
                    .map(|(outcome, left)| (left, outcome)),
                kind::SECRET => self.destroy_secret(resource).map(|o| (None, o)),
                kind::ROLE => self
                    .destroy_account(resource)
                    .map(|(outcome, left)| (left, outcome)),
                GRANT => self.destroy_grant(resource).map(|o| (None, o)),
                kind::FUNCTION => self.destroy_service(resource).map(|o| (None, o)),
                _ => Ok((None, "skipped (unknown kind)".to_string())),
            })?;
            match left {
                Some(left) => kept.push(left),
                None => removed(resource)?,
            }
        }
        Ok(kept)
    }
}

/// `deploy-kit up` for a GCP target through the one lifecycle of resource
/// engines ([`crate::engine::target::up_resources`]), without the offline
/// doctor gate (`deploy-kit up` runs it first), with the progress going where
/// the caller says (tests).
pub fn up_with(
    config: &DeployConfig,
    config_path: &Path,
    target_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &mut Progress,
) -> Result<u8, CommandError> {
    let cwd = config_path.parent().unwrap_or(Path::new("."));
    let request = crate::engine::target::UpRequest::new(cwd);
    up_with_request(config, config_path, target_name, &request, env, progress)
}

/// [`up_with`] with `up`'s flags (`--adopt`).
pub fn up_with_request(
    config: &DeployConfig,
    config_path: &Path,
    target_name: &str,
    request: &crate::engine::target::UpRequest,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &mut Progress,
) -> Result<u8, CommandError> {
    use crate::engine::target::{Family, Resources, up_resources};
    let deployment = Deployment::from_config(config.clone(), config_path, target_name)?;
    let target = Resources {
        deployment: &deployment,
        family: Family::Gcp,
    };
    up_resources(&target, request, env, progress)
}

/// `deploy-kit down` for a GCP target ([`crate::engine::target::down_resources`]),
/// with the progress going where the caller says (tests).
pub fn down_with(
    config: &DeployConfig,
    config_path: &Path,
    target_name: &str,
    delete_data: bool,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &mut Progress,
) -> Result<u8, CommandError> {
    use crate::engine::target::{Family, Resources, down_resources};
    let deployment = Deployment::from_config(config.clone(), config_path, target_name)?;
    let target = Resources {
        deployment: &deployment,
        family: Family::Gcp,
    };
    down_resources(&target, delete_data, env, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_summary_ignores_googles_extra_fields() {
        let sent = json!({"ingress": "INGRESS_TRAFFIC_ALL", "template": {
            "scaling": {"maxInstanceCount": 3, "minInstanceCount": 0}, "timeout": "300s",
            "maxInstanceRequestConcurrency": 80,
            "serviceAccount": "1-compute@developer.gserviceaccount.com",
            "containers": [{"image": "i:1", "resources": {"limits": {"cpu": "1"}}, "env": [
                {"name": "B", "value": "2"}, {"name": "A", "value": "1"},
                {"name": "K", "valueSource": {"secretKeyRef": {"secret": "projects/p/secrets/k", "version": "latest"}}}]}]}});
        let returned = json!({"uri": "https://x.run.app", "generation": "4", "ingress": "INGRESS_TRAFFIC_ALL",
            "template": {"scaling": {"maxInstanceCount": 3, "minInstanceCount": 0}, "timeout": "300s",
            "maxInstanceRequestConcurrency": 80,
            "serviceAccount": "1-compute@developer.gserviceaccount.com",
            "containers": [{"image": "i:1", "resources": {"limits": {"cpu": "1"}}, "env": [
                {"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                {"name": "K", "valueSource": {"secretKeyRef": {"secret": "k", "version": "latest"}}}]}]}});
        assert_eq!(service_summary(&sent), service_summary(&returned));
        let mut changed = returned.clone();
        changed["template"]["containers"][0]["image"] = json!("i:2");
        assert_ne!(service_summary(&sent), service_summary(&changed));
        for (pointer, value) in [
            (
                "/template/serviceAccount",
                json!("other@p.iam.gserviceaccount.com"),
            ),
            ("/template/scaling/minInstanceCount", json!(1)),
            ("/template/maxInstanceRequestConcurrency", json!(10)),
            ("/template/containers/0/resources/limits/cpu", json!("2")),
        ] {
            let mut changed = returned.clone();
            *changed.pointer_mut(pointer).unwrap() = value;
            assert_ne!(
                service_summary(&sent),
                service_summary(&changed),
                "{pointer}"
            );
        }
    }
}
