//! Rotation on AWS (feature `aws`): the key lives in Secrets Manager under
//! version stages, and the roll updates the Lambda function's environment.
//!
//! - stage: `PutSecretValue` with `AWSPENDING` (`AWSCURRENT` is untouched);
//! - promote: `AWSCURRENT` moves to the pending version (Secrets Manager
//!   labels the old one `AWSPREVIOUS`), then `AWSPENDING` is removed;
//! - retire: `AWSPREVIOUS` is removed from the old version.
//!
//! Lambda only takes keys as environment variables, so the roll writes
//! `VGI_SIGNING_KEY` (`AWSCURRENT`) and `VGI_SIGNING_KEY_PREVIOUS` (the
//! pending or previous version) and waits for the update to finish; new
//! invocations then run with the new environment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_lambda::types::{Environment, LastUpdateStatus};

use super::replicas::{ReplicaSet, RollOutcome};
use super::store::{KeyRef, KeySet, KeyStore, ReplicaKeys, Secret, replica_keys_with};
use crate::CommandError;
use crate::engine::aws::clients::{AwsClients, describe};

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";
const HINT: &str = "check the AWS credentials and region, and that the identity may read and write the secret (`secretsmanager:*SecretValue*`, `UpdateSecretVersionStage`, `ListSecretVersionIds`) and update the function";
/// How long a Lambda configuration update may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);

/// The SDK clients with their blocking runtime.
pub struct Clients {
    inner: AwsClients,
}

impl Clients {
    pub fn new(region: &str) -> Result<Clients, CommandError> {
        Ok(Clients {
            inner: AwsClients::new(region, None)?,
        })
    }

    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.inner.runtime.block_on(future)
    }
}

fn failed<E>(what: &str, error: aws_sdk_s3::error::SdkError<E>) -> CommandError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    CommandError::new(format!("{what}: {}", describe(&error)), HINT, 1)
}

/// The signing key's secret in Secrets Manager.
pub struct SecretsManagerStore {
    clients: Arc<Clients>,
    name: String,
}

/// The version ids holding each stage.
#[derive(Debug, Default)]
struct Stages {
    current: Option<String>,
    pending: Option<String>,
    previous: Option<String>,
}

impl SecretsManagerStore {
    pub fn new(clients: Arc<Clients>, name: &str) -> SecretsManagerStore {
        SecretsManagerStore {
            clients,
            name: name.to_string(),
        }
    }

    fn stages(&self) -> Result<Stages, CommandError> {
        stages(&self.clients.inner, &self.name)
    }

    fn move_stage(
        &self,
        stage: &str,
        to: Option<&str>,
        from: Option<&str>,
    ) -> Result<(), CommandError> {
        let name = &self.name;
        self.clients
            .block(
                self.clients
                    .inner
                    .secrets()
                    .update_secret_version_stage()
                    .secret_id(name)
                    .version_stage(stage)
                    .set_move_to_version_id(to.map(str::to_string))
                    .set_remove_from_version_id(from.map(str::to_string))
                    .send(),
            )
            .map_err(|e| failed(&format!("failed to move `{stage}` of secret `{name}`"), e))?;
        Ok(())
    }
}

/// The keys of secret `name` by version stage: `AWSCURRENT` signs;
/// `AWSPENDING` (staged, not yet promoted) and `AWSPREVIOUS` (promoted, not yet
/// retired) verify. `up` reads it too, so a deploy in the middle of a rotation
/// keeps every key the rotation put on the function.
pub fn read_key_set(clients: &AwsClients, name: &str) -> Result<KeySet, CommandError> {
    let stages = stages(clients, name)?;
    let current = stages.current.as_deref().ok_or_else(|| {
        CommandError::new(
            format!("secret `{name}` has no `AWSCURRENT` version"),
            "run `deploy-kit up` for the target first; it creates the key",
            2,
        )
    })?;
    let other = |id: Option<&str>| -> Result<Option<Secret>, CommandError> {
        match id {
            Some(id) if id != current => Ok(Some(value(clients, name, id)?)),
            _ => Ok(None),
        }
    };
    Ok(KeySet {
        primary: value(clients, name, current)?,
        pending: other(stages.pending.as_deref())?,
        previous: other(stages.previous.as_deref())?,
    })
}

fn stages(clients: &AwsClients, name: &str) -> Result<Stages, CommandError> {
    let mut stages = Stages::default();
    let mut token = None;
    loop {
        let page = clients
            .runtime
            .block_on(
                clients
                    .secrets()
                    .list_secret_version_ids()
                    .secret_id(name)
                    .set_next_token(token.clone())
                    .send(),
            )
            .map_err(|e| {
                failed(
                    &format!("failed to list the versions of secret `{name}`"),
                    e,
                )
            })?;
        for version in page.versions() {
            let Some(id) = version.version_id() else {
                continue;
            };
            for stage in version.version_stages() {
                let slot = match stage.as_str() {
                    CURRENT => &mut stages.current,
                    PENDING => &mut stages.pending,
                    PREVIOUS => &mut stages.previous,
                    _ => continue,
                };
                *slot = Some(id.to_string());
            }
        }
        // moto answers a token even on the last page; stop on an empty
        // page or a token seen before, too.
        let next = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if next.is_none() || page.versions().is_empty() || next == token {
            return Ok(stages);
        }
        token = next;
    }
}

fn value(clients: &AwsClients, name: &str, version: &str) -> Result<Secret, CommandError> {
    let answer = clients
        .runtime
        .block_on(
            clients
                .secrets()
                .get_secret_value()
                .secret_id(name)
                .version_id(version)
                .send(),
        )
        .map_err(|e| failed(&format!("failed to read secret `{name}`"), e))?;
    answer.secret_string().map(Secret::new).ok_or_else(|| {
        CommandError::new(
            format!("a version of secret `{name}` has no string value"),
            format!("store keys as text (`hex:` and 64 hex digits) in secret `{name}`"),
            1,
        )
    })
}

impl KeyStore for SecretsManagerStore {
    fn describe(&self) -> String {
        format!("Secrets Manager secret `{}`", self.name)
    }

    fn read(&self) -> Result<KeySet, CommandError> {
        read_key_set(&self.clients.inner, &self.name)
    }

    fn replica_keys(&self, keys: &KeySet) -> ReplicaKeys {
        replica_keys_with(keys, |secret, _| KeyRef::Value(secret.clone()))
    }

    fn stage(&mut self, new: &Secret) -> Result<(), CommandError> {
        let name = &self.name;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| {
            CommandError::new(format!("the random source failed: {e}"), "try again", 1)
        })?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        self.clients
            .block(
                self.clients
                    .inner
                    .secrets()
                    .put_secret_value()
                    .secret_id(name)
                    .client_request_token(token)
                    .secret_string(new.expose())
                    .version_stages(PENDING)
                    .send(),
            )
            .map_err(|e| {
                failed(
                    &format!("failed to stage a new version of secret `{name}`"),
                    e,
                )
            })?;
        Ok(())
    }

    fn promote(&mut self) -> Result<(), CommandError> {
        let stages = self.stages()?;
        let (Some(current), Some(pending)) = (stages.current, stages.pending) else {
            return Err(CommandError::new(
                format!(
                    "secret `{}` has no `AWSPENDING` version to promote",
                    self.name
                ),
                "stage one first: `deploy-kit secrets rotate --phase stage`",
                2,
            ));
        };
        if current != pending {
            self.move_stage(CURRENT, Some(&pending), Some(&current))?;
        }
        self.move_stage(PENDING, None, Some(&pending))
    }

    fn retire(&mut self) -> Result<(), CommandError> {
        match self.stages()?.previous {
            Some(previous) => self.move_stage(PREVIOUS, None, Some(&previous)),
            None => Ok(()),
        }
    }
}

/// The Lambda function: one configuration, every new invocation gets it.
pub struct LambdaReplicas {
    clients: Arc<Clients>,
    function: String,
}

impl LambdaReplicas {
    pub fn new(clients: Arc<Clients>, function: &str) -> LambdaReplicas {
        LambdaReplicas {
            clients,
            function: function.to_string(),
        }
    }

    fn wait_updated(&self) -> Result<(), CommandError> {
        let name = &self.function;
        let deadline = Instant::now() + UPDATE_TIMEOUT;
        loop {
            let configuration = self
                .clients
                .block(
                    self.clients
                        .inner
                        .lambda()
                        .get_function_configuration()
                        .function_name(name)
                        .send(),
                )
                .map_err(|e| failed(&format!("failed to read function `{name}`"), e))?;
            match configuration.last_update_status() {
                Some(LastUpdateStatus::InProgress) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_secs(2));
                }
                Some(LastUpdateStatus::InProgress) => {
                    return Err(CommandError::new(
                        format!(
                            "function `{name}` is still updating after {} s",
                            UPDATE_TIMEOUT.as_secs()
                        ),
                        "wait for it to settle",
                        1,
                    ));
                }
                Some(LastUpdateStatus::Failed) => {
                    return Err(CommandError::new(
                        format!(
                            "the configuration update of function `{name}` failed: {}",
                            configuration
                                .last_update_status_reason()
                                .unwrap_or("no reason given")
                        ),
                        "check the function in the Lambda console",
                        1,
                    ));
                }
                _ => return Ok(()),
            }
        }
    }
}

impl LambdaReplicas {
    /// A roll publishes `$LATEST` with the new keys and moves `live` to it.
    /// After a `rollback`, `live` runs an older version than `$LATEST` (the
    /// last `up`'s code): the roll would put that code live too, so it is
    /// refused, before any key changes.
    fn check_latest_is_live(&self) -> Result<(), CommandError> {
        let name = &self.function;
        // `None` when there is no such version or alias.
        let code = |qualifier: Option<&str>| {
            let read = self.clients.block(
                self.clients
                    .inner
                    .lambda()
                    .get_function_configuration()
                    .function_name(name)
                    .set_qualifier(qualifier.map(str::to_string))
                    .send(),
            );
            match read {
                Ok(configuration) => Ok(Some(
                    configuration.code_sha256().unwrap_or_default().to_string(),
                )),
                Err(error)
                    if crate::engine::aws::clients::code(&error)
                        == Some("ResourceNotFoundException") =>
                {
                    Ok(None)
                }
                Err(error) => Err(failed(&format!("failed to read function `{name}`"), error)),
            }
        };
        let (Some(latest), Some(live)) = (code(None)?, code(Some(crate::engine::aws::ALIAS))?)
        else {
            // Nothing live yet (the roll creates the alias), or no function:
            // the roll says so.
            return Ok(());
        };
        if latest == live {
            return Ok(());
        }
        Err(CommandError::new(
            format!(
                "function `{name}` serves code {live} on alias `{alias}`, and `$LATEST` holds code {latest} (the alias was rolled back): a key roll publishes `$LATEST`, so it would also put that code live",
                alias = crate::engine::aws::ALIAS
            ),
            "nothing was changed; deploy the code you want live first (`deploy-kit up TARGET --package ZIP`), then rotate",
            2,
        ))
    }
}

impl ReplicaSet for LambdaReplicas {
    fn describe(&self) -> String {
        format!("Lambda function `{}`", self.function)
    }

    fn preflight(&mut self) -> Result<(), CommandError> {
        self.check_latest_is_live()
    }

    fn roll(
        &mut self,
        keys: &ReplicaKeys,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RollOutcome, CommandError> {
        let name = &self.function;
        self.wait_updated()?;
        self.check_latest_is_live()?;
        let configuration = self
            .clients
            .block(
                self.clients
                    .inner
                    .lambda()
                    .get_function_configuration()
                    .function_name(name)
                    .send(),
            )
            .map_err(|e| failed(&format!("failed to read function `{name}`"), e))?;
        let mut variables: HashMap<String, String> = configuration
            .environment()
            .and_then(|e| e.variables())
            .cloned()
            .unwrap_or_default();
        for (variable, value) in keys.env() {
            match value {
                Some(value) => variables.insert(variable.to_string(), value),
                None => variables.remove(variable),
            };
        }
        self.clients
            .block(
                self.clients
                    .inner
                    .lambda()
                    .update_function_configuration()
                    .function_name(name)
                    .environment(
                        Environment::builder()
                            .set_variables(Some(variables))
                            .build(),
                    )
                    .send(),
            )
            .map_err(|e| {
                failed(
                    &format!("failed to update the environment of function `{name}`"),
                    e,
                )
            })?;
        self.wait_updated()?;
        // Traffic reaches the alias `live`, not `$LATEST`: publish the new
        // environment and move the alias to it.
        let (version, _, _) =
            crate::engine::aws::apply::publish_version(&self.clients.inner, name)?;
        crate::engine::aws::apply::point_alias(&self.clients.inner, name, &version)?;
        progress(&format!(
            "roll: function `{name}` updated (version {version} behind alias `{}`); new invocations run with the new keys",
            crate::engine::aws::ALIAS
        ));
        Ok(RollOutcome::Rolled)
    }
}
