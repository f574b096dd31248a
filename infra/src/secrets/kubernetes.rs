//! Rotation on Kubernetes, driven through `kubectl` like `up`: the keys live
//! in the signing-key Secret `up` created, and the roll is a rollout restart
//! of the Deployment `up` applied.
//!
//! The Secret has two keys the pods read (see `templates/k8s/deployment.yaml.j2`):
//! `value`, mounted as `VGI_SIGNING_KEY_FILE` (signs), and `previous`, injected
//! as `VGI_SIGNING_KEY_PREVIOUS` (comma-separated, verify only; optional, so
//! a Secret outside a rotation has none). A staged key is in `previous` too,
//! since it must verify before any replica signs with it; the annotation
//! [`PENDING_ANNOTATION`] holds its fingerprint (not secret) so the store
//! tells staged from promoted by its contents alone.
//!
//! - stage: `previous` gets the new key, the annotation its fingerprint;
//! - promote: `value` becomes the new key and `previous` the old one;
//! - retire: `previous` goes.
//!
//! Each is one `kubectl replace -f -` of the whole Secret on stdin, carrying
//! the `resourceVersion` it was read at, so a concurrent change fails the
//! write instead of being lost; labels, annotations and other keys are kept.

use super::replicas::{ReplicaSet, RollOutcome};
use super::store::{KeyRef, KeySet, KeyStore, ReplicaKeys, Secret, replica_keys_with};
use crate::CommandError;
use crate::engine::cli::Cli;
use crate::engine::cli::kubernetes::{
    ROLLOUT_TIMEOUT_SECONDS, RotationPlan, SecretError, SecretObject, namespaced,
};

/// The fingerprint of the staged key among the Secret's `previous` keys.
pub const PENDING_ANNOTATION: &str = "deploy-kit.dev/signing-key-pending";

/// The signing-key Secret of a Kubernetes target.
pub struct KubernetesSecretStore {
    cli: Cli,
    plan: RotationPlan,
}

impl KubernetesSecretStore {
    pub fn new(cli: Cli, plan: &RotationPlan) -> KubernetesSecretStore {
        KubernetesSecretStore {
            cli,
            plan: plan.clone(),
        }
    }

    /// `kubectl -n NS get secret NAME -o json`, captured and never shown.
    fn get(&self) -> Result<SecretObject, CommandError> {
        let RotationPlan {
            namespace,
            secret_name,
            ..
        } = &self.plan;
        let output = self.cli.run(
            &namespaced(namespace, &["get", "secret", secret_name, "-o", "json"]),
            None,
            true,
        )?;
        if !output.success {
            return Err(SecretError::Unreadable {
                namespace: namespace.clone(),
                name: secret_name.clone(),
            }
            .into());
        }
        Ok(SecretObject::from_json(
            namespace,
            secret_name,
            &output.stdout,
        )?)
    }

    fn keys_of(&self, secret: &SecretObject) -> Result<KeySet, SecretError> {
        let primary = secret
            .data
            .get(&self.plan.primary_key)
            .filter(|key| !key.expose().trim().is_empty())
            .cloned()
            .ok_or_else(|| SecretError::MissingKey {
                namespace: self.plan.namespace.clone(),
                name: self.plan.secret_name.clone(),
                key: self.plan.primary_key.clone(),
            })?;
        let verify: Vec<Secret> = secret
            .data
            .get(&self.plan.verify_key)
            .map(|list| {
                list.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|key| !key.is_empty())
                    .map(Secret::new)
                    .collect()
            })
            .unwrap_or_default();
        let staged = secret.annotations.get(PENDING_ANNOTATION);
        let (pending, previous): (Vec<Secret>, Vec<Secret>) = verify
            .into_iter()
            .partition(|key| Some(&key.fingerprint()) == staged);
        Ok(KeySet {
            primary,
            pending: pending.into_iter().next(),
            previous: previous.into_iter().next(),
        })
    }

    /// Writes `keys` into the Secret it was read as, keeping everything else.
    fn write(&self, mut secret: SecretObject, keys: &KeySet) -> Result<(), CommandError> {
        let RotationPlan {
            namespace,
            secret_name,
            primary_key,
            verify_key,
            ..
        } = &self.plan;
        secret
            .data
            .insert(primary_key.clone(), keys.primary.clone());
        let verify: Vec<&str> = [&keys.pending, &keys.previous]
            .into_iter()
            .flatten()
            .map(Secret::expose)
            .collect();
        if verify.is_empty() {
            secret.data.remove(verify_key);
        } else {
            secret
                .data
                .insert(verify_key.clone(), Secret::new(verify.join(",")));
        }
        match &keys.pending {
            Some(pending) => secret
                .annotations
                .insert(PENDING_ANNOTATION.to_string(), pending.fingerprint()),
            None => secret.annotations.remove(PENDING_ANNOTATION),
        };
        self.cli.must(
            &namespaced(namespace, &["replace", "-f", "-"]),
            Some(secret.manifest().as_bytes()),
            false,
            &format!(
                "check that your context may update the Secret (`kubectl -n {namespace} auth can-i update secret/{secret_name}`); if it changed meanwhile, run the command again"
            ),
        )?;
        Ok(())
    }
}

impl KeyStore for KubernetesSecretStore {
    fn describe(&self) -> String {
        format!(
            "Secret `{}` in namespace `{}`",
            self.plan.secret_name, self.plan.namespace
        )
    }

    fn read(&self) -> Result<KeySet, CommandError> {
        Ok(self.keys_of(&self.get()?)?)
    }

    fn replica_keys(&self, keys: &KeySet) -> ReplicaKeys {
        replica_keys_with(keys, |secret, _| KeyRef::Value(secret.clone()))
    }

    fn stage(&mut self, new: &Secret) -> Result<(), CommandError> {
        let secret = self.get()?;
        let mut keys = self.keys_of(&secret)?;
        keys.pending = Some(new.clone());
        self.write(secret, &keys)
    }

    fn promote(&mut self) -> Result<(), CommandError> {
        let secret = self.get()?;
        let keys = self.keys_of(&secret)?;
        let Some(pending) = keys.pending else {
            return Err(SecretError::NothingStaged {
                namespace: self.plan.namespace.clone(),
                name: self.plan.secret_name.clone(),
            }
            .into());
        };
        let promoted = KeySet {
            primary: pending,
            pending: None,
            previous: Some(keys.primary),
        };
        self.write(secret, &promoted)
    }

    fn retire(&mut self) -> Result<(), CommandError> {
        let secret = self.get()?;
        let mut keys = self.keys_of(&secret)?;
        keys.previous = None;
        self.write(secret, &keys)
    }
}

/// The target's Deployment: a rollout restart replaces its pods under the
/// rendered strategy (`maxUnavailable: 0`), and each new pod reads the
/// Secret at start.
pub struct KubernetesReplicas {
    cli: Cli,
    plan: RotationPlan,
}

impl KubernetesReplicas {
    pub fn new(cli: Cli, plan: &RotationPlan) -> KubernetesReplicas {
        KubernetesReplicas {
            cli,
            plan: plan.clone(),
        }
    }
}

impl ReplicaSet for KubernetesReplicas {
    fn describe(&self) -> String {
        format!(
            "the pods of Deployment `{}` in namespace `{}`",
            self.plan.deployment_name, self.plan.namespace
        )
    }

    fn roll(
        &mut self,
        _keys: &ReplicaKeys,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RollOutcome, CommandError> {
        let namespace = &self.plan.namespace;
        let deployment = format!("deployment/{}", self.plan.deployment_name);
        let why = format!(
            "see why with `kubectl -n {namespace} describe {deployment}` and `kubectl -n {namespace} logs {deployment}`"
        );
        self.cli.must(
            &namespaced(namespace, &["rollout", "restart", &deployment]),
            None,
            false,
            &format!("check that your context may patch `{deployment}` in namespace `{namespace}`"),
        )?;
        progress(&format!(
            "roll: `kubectl -n {namespace} rollout restart {deployment}` started; waiting for it"
        ));
        self.cli.must(
            &namespaced(
                namespace,
                &[
                    "rollout",
                    "status",
                    &deployment,
                    &format!("--timeout={ROLLOUT_TIMEOUT_SECONDS}s"),
                ],
            ),
            None,
            false,
            &why,
        )?;
        Ok(RollOutcome::Rolled)
    }
}
