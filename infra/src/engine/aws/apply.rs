//! Making and removing the AWS resources of [`super::AwsSettings`], each step
//! create-or-update: read what is there, change only what differs, and read
//! bucket settings back to verify them (the bucket step is [`super::bucket`],
//! which the compose engine shares).
//!
//! The signing key is made once (32 bytes from the OS CSPRNG, hex) and never
//! overwritten; its value only travels from Secrets Manager into the
//! function's environment, never into output, errors or the state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Environment, FunctionUrlAuthType, LastUpdateStatus, State as FunctionState,
};
use serde_json::json;

use super::bucket::Buckets;
use super::clients::{AwsClients, code, describe};
use super::{
    ALIAS, AwsSettings, KEY_BYTES, KEY_VARIABLE, MEMORY_MB, POLICY_NAME, PREVIOUS_KEY_VARIABLE,
    RUNTIME, URL_PERMISSION_ID, artifact_bucket, artifact_key,
};
use crate::CommandError;
use crate::engine::owner::{Claim, Owner, OwnershipError, TAG_KEY};
use crate::engine::{DestroyOptions, Engine, Kept, Progress, Resource, State, kind};

/// How long a deleted secret can be restored (`up` restores it; AWS's
/// default and longest window).
pub const SECRET_RECOVERY_DAYS: i64 = 30;

fn secret_tags(owner: &Owner) -> Vec<aws_sdk_secretsmanager::types::Tag> {
    owner
        .tags()
        .into_iter()
        .map(|(key, value)| {
            aws_sdk_secretsmanager::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
        })
        .collect()
}

fn role_tags(owner: &Owner) -> Vec<aws_sdk_iam::types::Tag> {
    owner
        .tags()
        .into_iter()
        .map(|(key, value)| {
            aws_sdk_iam::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
                .expect("key and value are set")
        })
        .collect()
}

fn function_tags(owner: &Owner) -> HashMap<String, String> {
    owner
        .tags()
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

const CREDENTIALS_HINT: &str = "check the AWS credentials (`AWS_PROFILE` or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), the region, and that the identity may manage S3, Secrets Manager, IAM and Lambda";
/// How long a function may stay `Pending` or `InProgress`.
const FUNCTION_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long IAM may take before Lambda can assume a new role.
const ROLE_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The engine: settings, SDK clients and the function package (zip bytes).
#[derive(Debug)]
pub struct AwsEngine {
    settings: AwsSettings,
    clients: AwsClients,
    package: Option<Vec<u8>>,
    /// `KIT_API_KEYS` for the function, read before anything changes.
    api_keys: Option<crate::secrets::store::Secret>,
    /// Whose resources these are (`up`, `down`): what is made is tagged,
    /// another deployment's resources are neither taken over nor deleted.
    /// `None` (rollback, `plan --refresh`) checks nothing.
    owner: Option<Owner>,
}

fn sdk_error<E>(what: &str, error: aws_sdk_s3::error::SdkError<E>) -> CommandError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    CommandError::new(format!("{what}: {}", describe(&error)), CREDENTIALS_HINT, 1)
}

/// The `auth.api_keys` secret's value, checked the way the service parses
/// it (an error names the line's problem, never a key).
fn read_api_keys(
    clients: &AwsClients,
    name: &str,
) -> Result<crate::secrets::store::Secret, CommandError> {
    let answer = clients
        .runtime
        .block_on(clients.secrets().get_secret_value().secret_id(name).send());
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) if code(&error) == Some("ResourceNotFoundException") => {
            return Err(CommandError::new(
                format!("the API keys secret `{name}` (`auth.api_keys`) does not exist"),
                format!(
                    "create it before `up`, one `name=key[;expires=YYYY-MM-DD][;scopes=...]` per line: aws secretsmanager create-secret --name {name} --secret-string \"ci=$(openssl rand -hex 32)\""
                ),
                2,
            ));
        }
        Err(error) => {
            return Err(sdk_error(
                &format!("failed to read the API keys secret `{name}`"),
                error,
            ));
        }
    };
    let text = answer.secret_string().unwrap_or_default();
    if let Err(error) = kit_checks::api_keys::parse(text) {
        return Err(CommandError::new(
            format!("the API keys secret `{name}` (`auth.api_keys`): {error}"),
            "store one `name=key[;expires=YYYY-MM-DD][;scopes=protocol/method ...]` per line (docs/configuration.md, `KIT_API_KEYS`)",
            2,
        ));
    }
    Ok(crate::secrets::store::Secret::new(text))
}

impl AwsEngine {
    pub fn new(settings: AwsSettings, package: Option<Vec<u8>>) -> Result<AwsEngine, CommandError> {
        let clients = AwsClients::new(&settings.region, None)?;
        // Deploying (a package is given): keys the function needs must be
        // readable now, before anything is created.
        let api_keys = match (&package, &settings.api_keys_secret) {
            (Some(_), Some(name)) => Some(read_api_keys(&clients, name)?),
            _ => None,
        };
        Ok(AwsEngine {
            settings,
            clients,
            package,
            api_keys,
            owner: None,
        })
    }

    /// The engine working for `owner` ([`crate::engine::owner`]).
    pub fn owned_by(mut self, owner: Option<Owner>) -> AwsEngine {
        self.owner = owner;
        self
    }

    /// Refuses `kind` `name` (tagged `found`) when it is another
    /// deployment's; `true` when it must be tagged as this one's.
    fn claim(&self, kind: &str, name: &str, found: Option<&str>) -> Result<bool, CommandError> {
        match &self.owner {
            Some(owner) => Ok(owner.claim(kind, name, found)? == Claim::Take),
            None => Ok(false),
        }
    }

    /// The deployment tag of a recorded resource, `Ok(None)` when it is
    /// gone (nothing to check), `Ok(Some(None))` when it is untagged.
    #[allow(clippy::option_option)]
    fn recorded_tag(&self, resource: &Resource) -> Result<Option<Option<String>>, CommandError> {
        let name = resource.name.as_str();
        let ours = |key: &str| key == TAG_KEY;
        match resource.kind.as_str() {
            kind::BUCKET => {
                match self.block(self.clients.s3.head_bucket().bucket(name).send()) {
                    Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                        return Ok(None);
                    }
                    _ => {}
                }
                self.buckets().deployment_tag(name).map(Some)
            }
            kind::SECRET => {
                match self.block(
                    self.clients
                        .secrets()
                        .describe_secret()
                        .secret_id(name)
                        .send(),
                ) {
                    Ok(secret) => Ok(Some(
                        secret
                            .tags()
                            .iter()
                            .find(|t| t.key().is_some_and(ours))
                            .and_then(|t| t.value().map(str::to_string)),
                    )),
                    Err(error) if code(&error) == Some("ResourceNotFoundException") => Ok(None),
                    Err(error) => Err(sdk_error(&format!("failed to read secret `{name}`"), error)),
                }
            }
            kind::ROLE => match self.block(self.clients.iam().get_role().role_name(name).send()) {
                Ok(output) => Ok(Some(output.role().and_then(|role| {
                    role.tags()
                        .iter()
                        .find(|t| ours(t.key()))
                        .map(|t| t.value().to_string())
                }))),
                Err(error) if code(&error) == Some("NoSuchEntity") => Ok(None),
                Err(error) => Err(sdk_error(&format!("failed to read role `{name}`"), error)),
            },
            kind::FUNCTION => {
                match self.block(
                    self.clients
                        .lambda()
                        .get_function()
                        .function_name(name)
                        .send(),
                ) {
                    Ok(function) => Ok(Some(
                        function.tags().and_then(|tags| tags.get(TAG_KEY)).cloned(),
                    )),
                    Err(error) if code(&error) == Some("ResourceNotFoundException") => Ok(None),
                    Err(error) => Err(sdk_error(
                        &format!("failed to read function `{name}`"),
                        error,
                    )),
                }
            }
            // The Function URL is the function's: its tag is the function's.
            _ => Ok(None),
        }
    }

    /// Before `down` deletes anything: every recorded resource that still
    /// exists carries this deployment's tag, in the account the state's
    /// ARNs name.
    fn check_deletable(&self, state: &State) -> Result<(), CommandError> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        let recorded_account = state.resources.iter().find_map(|r| {
            let arn = r.outputs.get("arn")?;
            let account = arn.split(':').nth(4)?;
            (!account.is_empty()).then(|| account.to_string())
        });
        if let Some(recorded) = recorded_account {
            let current = self.account()?;
            if current != recorded {
                return Err(OwnershipError::OtherAccount { recorded, current }.into());
            }
        }
        for resource in &state.resources {
            if let Some(found) = self.recorded_tag(resource)? {
                owner.may_delete(&resource.kind, &resource.name, found.as_deref())?;
            }
        }
        Ok(())
    }

    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.clients.runtime.block_on(future)
    }

    fn account(&self) -> Result<String, CommandError> {
        let identity = self
            .block(self.clients.sts().get_caller_identity().send())
            .map_err(|e| {
                sdk_error(
                    "failed to identify the AWS account (sts:GetCallerIdentity)",
                    e,
                )
            })?;
        identity.account().map(str::to_string).ok_or_else(|| {
            CommandError::new(
                "sts:GetCallerIdentity returned no account",
                CREDENTIALS_HINT,
                1,
            )
        })
    }

    fn buckets(&self) -> Buckets<'_> {
        Buckets {
            clients: &self.clients,
            region: &self.settings.region,
            endpoint: None,
            target: &self.settings.target,
            hint: CREDENTIALS_HINT,
            owner: self.owner.as_ref(),
        }
    }

    /// Creates the secret once; an existing one is kept as it is.
    fn ensure_secret(&self) -> Result<(Resource, String), CommandError> {
        let name = &self.settings.secret_name;
        let secrets = self.clients.secrets();
        let described = self.block(secrets.describe_secret().secret_id(name).send());
        let (arn, outcome) = match described {
            Ok(secret) => {
                let mut outcome = "exists, kept".to_string();
                let found = secret
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(TAG_KEY))
                    .and_then(|t| t.value());
                if self.claim(kind::SECRET, name, found)? {
                    let owner = self.owner.as_ref().expect("claimed by an owner");
                    self.block(
                        secrets
                            .tag_resource()
                            .secret_id(name)
                            .set_tags(Some(secret_tags(owner)))
                            .send(),
                    )
                    .map_err(|e| sdk_error(&format!("failed to tag secret `{name}`"), e))?;
                    outcome = "exists, tagged as this deployment's".to_string();
                }
                if secret.deleted_date().is_some() {
                    self.block(secrets.restore_secret().secret_id(name).send())
                        .map_err(|e| sdk_error(&format!("failed to restore secret `{name}`"), e))?;
                    outcome = "was scheduled for deletion, restored".to_string();
                }
                (secret.arn().unwrap_or_default().to_string(), outcome)
            }
            Err(error) if code(&error) == Some("ResourceNotFoundException") => {
                let mut bytes = [0u8; KEY_BYTES];
                getrandom::fill(&mut bytes).map_err(|e| {
                    CommandError::new(
                        format!("failed to generate the signing key: {e}"),
                        "the system's random source failed; try again",
                        1,
                    )
                })?;
                let value = format!(
                    "hex:{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
                let created = self
                    .block(
                        secrets
                            .create_secret()
                            .name(name)
                            .description(format!(
                                "vgi-rpc stream-token signing key of `{}` (deploy-kit)",
                                self.settings.function_name
                            ))
                            .secret_string(value)
                            .set_tags(self.owner.as_ref().map(secret_tags))
                            .send(),
                    )
                    .map_err(|e| sdk_error(&format!("failed to create secret `{name}`"), e))?;
                (
                    created.arn().unwrap_or_default().to_string(),
                    "created".to_string(),
                )
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to look up secret `{name}`"),
                    error,
                ));
            }
        };
        let mut resource = Resource::new(kind::SECRET, name);
        resource.outputs.insert("arn".into(), arn);
        Ok((resource, outcome))
    }

    /// The keys for the function's environment only: the current key, plus
    /// the pending or previous one while a rotation is under way.
    fn read_keys(&self) -> Result<crate::secrets::store::ReplicaKeys, CommandError> {
        use crate::secrets::store::{KeyRef, replica_keys_with};
        let keys = crate::secrets::aws::read_key_set(&self.clients, &self.settings.secret_name)?;
        Ok(replica_keys_with(&keys, |secret, _| {
            KeyRef::Value(secret.clone())
        }))
    }

    fn ensure_role(
        &self,
        account: &str,
        secret_arn: &str,
    ) -> Result<(Resource, String), CommandError> {
        let name = &self.settings.role_name;
        let iam = self.clients.iam();
        let trust = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole"
            }]
        });
        let mut statements = vec![
            json!({"Sid": "SigningKey", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn}),
            json!({"Sid": "Logs", "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": format!("arn:aws:logs:{}:{account}:log-group:/aws/lambda/{}:*", self.settings.region, self.settings.function_name)}),
        ];
        if let Some(bucket) = &self.settings.bucket {
            statements.push(json!({"Sid": "Objects", "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": format!("arn:aws:s3:::{}/{}*", bucket.name, bucket.prefix)}));
            statements.push(
                json!({"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket",
                "Resource": format!("arn:aws:s3:::{}", bucket.name),
                "Condition": {"StringLike": {"s3:prefix": format!("{}*", bucket.prefix)}}}),
            );
        }
        let policy = json!({"Version": "2012-10-17", "Statement": statements});
        let mut changed = Vec::new();
        let (arn, created) = match self.block(iam.get_role().role_name(name).send()) {
            Ok(output) => {
                let role = output.role();
                let arn = role.map(|r| r.arn().to_string()).unwrap_or_default();
                let found = role.and_then(|r| {
                    r.tags()
                        .iter()
                        .find(|t| t.key() == TAG_KEY)
                        .map(|t| t.value())
                });
                if self.claim(kind::ROLE, name, found)? {
                    let owner = self.owner.as_ref().expect("claimed by an owner");
                    self.block(
                        iam.tag_role()
                            .role_name(name)
                            .set_tags(Some(role_tags(owner)))
                            .send(),
                    )
                    .map_err(|e| sdk_error(&format!("failed to tag role `{name}`"), e))?;
                    changed.push("ownership tag");
                }
                let current = role
                    .and_then(|r| r.assume_role_policy_document())
                    .and_then(policy_json);
                if current.as_ref() != Some(&trust) {
                    self.block(
                        iam.update_assume_role_policy()
                            .role_name(name)
                            .policy_document(trust.to_string())
                            .send(),
                    )
                    .map_err(|e| {
                        sdk_error(
                            &format!("failed to update the trust policy of role `{name}`"),
                            e,
                        )
                    })?;
                    changed.push("trust policy");
                }
                (arn, false)
            }
            Err(error) if code(&error) == Some("NoSuchEntity") => {
                let output = self
                    .block(
                        iam.create_role()
                            .role_name(name)
                            .assume_role_policy_document(trust.to_string())
                            .description(format!(
                                "runs `{}` (deploy-kit)",
                                self.settings.function_name
                            ))
                            .set_tags(self.owner.as_ref().map(role_tags))
                            .send(),
                    )
                    .map_err(|e| sdk_error(&format!("failed to create role `{name}`"), e))?;
                (
                    output
                        .role()
                        .map(|r| r.arn().to_string())
                        .unwrap_or_default(),
                    true,
                )
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to look up role `{name}`"),
                    error,
                ));
            }
        };
        let current_policy = match self.block(
            iam.get_role_policy()
                .role_name(name)
                .policy_name(POLICY_NAME)
                .send(),
        ) {
            Ok(output) => policy_json(output.policy_document()),
            Err(error) if code(&error) == Some("NoSuchEntity") => None,
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to read the policy of role `{name}`"),
                    error,
                ));
            }
        };
        if current_policy.as_ref() != Some(&policy) {
            self.block(
                iam.put_role_policy()
                    .role_name(name)
                    .policy_name(POLICY_NAME)
                    .policy_document(policy.to_string())
                    .send(),
            )
            .map_err(|e| sdk_error(&format!("failed to set the policy of role `{name}`"), e))?;
            changed.push("policy");
        }
        let mut resource = Resource::new(kind::ROLE, name);
        resource.outputs.insert("arn".into(), arn);
        let outcome = match (created, changed.is_empty()) {
            (true, _) => "created".to_string(),
            (false, true) => "unchanged".to_string(),
            (false, false) => format!("updated {}", changed.join(" and ")),
        };
        Ok((resource, outcome))
    }

    fn wait_function_ready(&self) -> Result<(), CommandError> {
        let name = &self.settings.function_name;
        let deadline = Instant::now() + FUNCTION_READY_TIMEOUT;
        loop {
            let configuration = self
                .block(
                    self.clients
                        .lambda()
                        .get_function_configuration()
                        .function_name(name)
                        .send(),
                )
                .map_err(|e| sdk_error(&format!("failed to read function `{name}`"), e))?;
            let state = configuration.state();
            let update = configuration.last_update_status();
            if state == Some(&FunctionState::Failed) || update == Some(&LastUpdateStatus::Failed) {
                return Err(CommandError::new(
                    format!(
                        "function `{name}` failed: {}",
                        configuration
                            .state_reason()
                            .or(configuration.last_update_status_reason())
                            .unwrap_or("no reason given")
                    ),
                    "check that the package's service binary was built for Lambda (`--features lambda`, Linux)",
                    1,
                ));
            }
            if state != Some(&FunctionState::Pending)
                && update != Some(&LastUpdateStatus::InProgress)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CommandError::new(
                    format!(
                        "function `{name}` is still updating after {} s",
                        FUNCTION_READY_TIMEOUT.as_secs()
                    ),
                    format!(
                        "run `deploy-kit up {}` again once it settles",
                        self.settings.target
                    ),
                    1,
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// A package over the inline limit is put in the account's artifact
    /// bucket (made when missing, the object skipped when there already)
    /// and returned as `(bucket, key)`; a smaller one travels inline (`None`).
    fn stage_package(
        &self,
        account: &str,
        package: &[u8],
    ) -> Result<Option<(String, String)>, CommandError> {
        if package.len() as u64 <= self.settings.inline_limit_bytes {
            return Ok(None);
        }
        let s3 = &self.clients.s3;
        let bucket = artifact_bucket(account, &self.settings.region);
        let sha256 = crate::build::registry::digest_of(package)
            .trim_start_matches("sha256:")
            .to_string();
        let key = artifact_key(&sha256);
        let head = self.block(
            s3.head_bucket()
                .bucket(&bucket)
                .expected_bucket_owner(account)
                .send(),
        );
        match head {
            Ok(_) => {}
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                let mut request = s3.create_bucket().bucket(&bucket);
                if self.settings.region != "us-east-1" {
                    request = request.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                                self.settings.region.as_str(),
                            ))
                            .build(),
                    );
                }
                self.block(request.send()).map_err(|e| {
                    sdk_error(
                        &format!("failed to create the artifact bucket `{bucket}`"),
                        e,
                    )
                })?;
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("the artifact bucket `{bucket}` is not usable by account {account}"),
                    error,
                ));
            }
        }
        let there = self.block(
            s3.head_object()
                .bucket(&bucket)
                .key(&key)
                .expected_bucket_owner(account)
                .send(),
        );
        match there {
            Ok(object) if object.content_length() == Some(package.len() as i64) => {}
            Ok(_) | Err(_) => {
                self.block(
                    s3.put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .expected_bucket_owner(account)
                        .content_type("application/zip")
                        .body(aws_sdk_s3::primitives::ByteStream::from(package.to_vec()))
                        .send(),
                )
                .map_err(|e| {
                    sdk_error(
                        &format!("failed to upload the function package to `s3://{bucket}/{key}`"),
                        e,
                    )
                })?;
            }
        }
        Ok(Some((bucket, key)))
    }

    fn ensure_function(
        &self,
        account: &str,
        role_arn: &str,
        keys: &crate::secrets::store::ReplicaKeys,
    ) -> Result<(Resource, String), CommandError> {
        let name = &self.settings.function_name;
        let package = self.package.as_deref().ok_or_else(|| {
            CommandError::new(
                "no function package: `up` needs the service binary built for Lambda",
                "run `deploy-kit build --target <target>` (what `up` does), or pass an existing zip with `--package`",
                2,
            )
        })?;
        let lambda = self.clients.lambda();
        let mut variables: HashMap<String, String> =
            self.settings.environment.clone().into_iter().collect();
        for (variable, value) in keys.env() {
            if let Some(value) = value {
                variables.insert(variable.to_string(), value);
            }
        }
        if let Some(api_keys) = &self.api_keys {
            variables.insert("KIT_API_KEYS".to_string(), api_keys.expose().to_string());
        }
        let environment = Environment::builder()
            .set_variables(Some(variables.clone()))
            .build();
        let timeout = i32::try_from(self.settings.timeout_seconds).unwrap_or(900);
        let hash = crate::plan::package_hash(package);
        // Staged only when the code is about to change.
        let staged = std::cell::OnceCell::new();
        let stage = || -> Result<&Option<(String, String)>, CommandError> {
            if let Some(staged) = staged.get() {
                return Ok(staged);
            }
            let value = self.stage_package(account, package)?;
            Ok(staged.get_or_init(|| value))
        };
        let current = self.block(
            lambda
                .get_function_configuration()
                .function_name(name)
                .send(),
        );
        let outcome = match current {
            Err(error) if code(&error) == Some("ResourceNotFoundException") => {
                let started = Instant::now();
                let function_code = match stage()? {
                    Some((bucket, key)) => aws_sdk_lambda::types::FunctionCode::builder()
                        .s3_bucket(bucket)
                        .s3_key(key),
                    None => {
                        aws_sdk_lambda::types::FunctionCode::builder().zip_file(Blob::new(package))
                    }
                }
                .build();
                loop {
                    let created = self.block(
                        lambda
                            .create_function()
                            .function_name(name)
                            .runtime(aws_sdk_lambda::types::Runtime::from(RUNTIME))
                            .handler("bootstrap")
                            .role(role_arn)
                            .memory_size(MEMORY_MB)
                            .timeout(timeout)
                            .environment(environment.clone())
                            .code(function_code.clone())
                            .set_tags(self.owner.as_ref().map(function_tags))
                            .send(),
                    );
                    match created {
                        Ok(_) => break,
                        // A new role takes a few seconds before Lambda may assume it.
                        Err(error)
                            if code(&error) == Some("InvalidParameterValueException")
                                && describe(&error).contains("role")
                                && started.elapsed() < ROLE_PROPAGATION_TIMEOUT =>
                        {
                            std::thread::sleep(Duration::from_secs(3));
                        }
                        Err(error) => {
                            return Err(sdk_error(
                                &format!("failed to create function `{name}`"),
                                error,
                            ));
                        }
                    }
                }
                self.wait_function_ready()?;
                "created".to_string()
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to look up function `{name}`"),
                    error,
                ));
            }
            Ok(configuration) => {
                let mut changed = Vec::new();
                let arn = configuration.function_arn().unwrap_or_default();
                let tags = self
                    .block(lambda.list_tags().resource(arn).send())
                    .map_err(|e| {
                        sdk_error(&format!("failed to read the tags of function `{name}`"), e)
                    })?;
                let found = tags.tags().and_then(|tags| tags.get(TAG_KEY));
                if self.claim(kind::FUNCTION, name, found.map(String::as_str))? {
                    let owner = self.owner.as_ref().expect("claimed by an owner");
                    self.block(
                        lambda
                            .tag_resource()
                            .resource(arn)
                            .set_tags(Some(function_tags(owner)))
                            .send(),
                    )
                    .map_err(|e| sdk_error(&format!("failed to tag function `{name}`"), e))?;
                    changed.push("ownership tag");
                }
                let current_variables = configuration.environment().and_then(|e| e.variables());
                let same_configuration = configuration.runtime().map(|r| r.as_str())
                    == Some(RUNTIME)
                    && configuration.handler() == Some("bootstrap")
                    && configuration.role() == Some(role_arn)
                    && configuration.memory_size() == Some(MEMORY_MB)
                    && configuration.timeout() == Some(timeout)
                    && current_variables == Some(&variables);
                if !same_configuration {
                    self.wait_function_ready()?;
                    self.block(
                        lambda
                            .update_function_configuration()
                            .function_name(name)
                            .runtime(aws_sdk_lambda::types::Runtime::from(RUNTIME))
                            .handler("bootstrap")
                            .role(role_arn)
                            .memory_size(MEMORY_MB)
                            .timeout(timeout)
                            .environment(environment)
                            .send(),
                    )
                    .map_err(|e| {
                        sdk_error(
                            &format!("failed to update the configuration of function `{name}`"),
                            e,
                        )
                    })?;
                    changed.push("configuration");
                }
                if configuration.code_sha256() != Some(hash.as_str()) {
                    let request = lambda.update_function_code().function_name(name);
                    let request = match stage()? {
                        Some((bucket, key)) => request.s3_bucket(bucket).s3_key(key),
                        None => request.zip_file(Blob::new(package)),
                    };
                    self.wait_function_ready()?;
                    self.block(request.send()).map_err(|e| {
                        sdk_error(
                            &format!("failed to update the code of function `{name}`"),
                            e,
                        )
                    })?;
                    changed.push("code");
                }
                if changed.is_empty() {
                    "unchanged".to_string()
                } else {
                    self.wait_function_ready()?;
                    format!("updated {}", changed.join(" and "))
                }
            }
        };
        let arn = self
            .block(
                lambda
                    .get_function_configuration()
                    .function_name(name)
                    .send(),
            )
            .map_err(|e| sdk_error(&format!("failed to read function `{name}`"), e))?
            .function_arn()
            .unwrap_or_default()
            .to_string();
        let mut resource = Resource::new(kind::FUNCTION, name);
        resource.outputs.insert("arn".into(), arn);
        if let Some(Some((bucket, key))) = staged.get() {
            resource
                .outputs
                .insert("package".into(), format!("s3://{bucket}/{key}"));
        }
        Ok((resource, outcome))
    }

    fn ensure_endpoint(&self) -> Result<(Resource, String), CommandError> {
        let name = &self.settings.function_name;
        let lambda = self.clients.lambda();
        let auth = if self.settings.public {
            FunctionUrlAuthType::None
        } else {
            FunctionUrlAuthType::AwsIam
        };
        let (url, outcome) = match self.block(
            lambda
                .get_function_url_config()
                .function_name(name)
                .qualifier(ALIAS)
                .send(),
        ) {
            Ok(config) if config.auth_type() == &auth => {
                (config.function_url().to_string(), "unchanged")
            }
            Ok(_) => {
                let updated = self
                    .block(
                        lambda
                            .update_function_url_config()
                            .function_name(name)
                            .qualifier(ALIAS)
                            .auth_type(auth.clone())
                            .send(),
                    )
                    .map_err(|e| {
                        sdk_error(&format!("failed to update the Function URL of `{name}`"), e)
                    })?;
                (updated.function_url().to_string(), "updated auth")
            }
            Err(error) if code(&error) == Some("ResourceNotFoundException") => {
                let created = self
                    .block(
                        lambda
                            .create_function_url_config()
                            .function_name(name)
                            .qualifier(ALIAS)
                            .auth_type(auth.clone())
                            .send(),
                    )
                    .map_err(|e| {
                        sdk_error(&format!("failed to create the Function URL of `{name}`"), e)
                    })?;
                let url = created.function_url().to_string();
                self.drop_unqualified_url(&url)?;
                (url, "created")
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to look up the Function URL of `{name}`"),
                    error,
                ));
            }
        };
        if self.settings.public {
            // Public URLs need both permissions (AWS, October 2025).
            let url_permission = lambda
                .add_permission()
                .function_name(name)
                .qualifier(ALIAS)
                .statement_id(URL_PERMISSION_ID)
                .action("lambda:InvokeFunctionUrl")
                .principal("*")
                .function_url_auth_type(FunctionUrlAuthType::None)
                .send();
            let invoke_permission = lambda
                .add_permission()
                .function_name(name)
                .qualifier(ALIAS)
                .statement_id(format!("{URL_PERMISSION_ID}-invoke"))
                .action("lambda:InvokeFunction")
                .principal("*")
                .invoked_via_function_url(true)
                .send();
            for result in [
                self.block(url_permission).map(|_| ()),
                self.block(invoke_permission).map(|_| ()),
            ] {
                match result {
                    Ok(()) => {}
                    Err(error) if code(&error) == Some("ResourceConflictException") => {}
                    Err(error) => {
                        return Err(sdk_error(
                            &format!("failed to allow public calls to `{name}`"),
                            error,
                        ));
                    }
                }
            }
        }
        let mut resource = Resource::new(kind::ENDPOINT, name);
        resource.outputs.insert("url".into(), url);
        Ok((resource, outcome.to_string()))
    }

    /// A deploy-kit before releases put the Function URL on the function
    /// itself (`$LATEST`); once the one on the alias exists, that one would
    /// keep serving new code around any rollback, so it goes (with its
    /// permissions). moto keeps one URL per function whatever the qualifier,
    /// so a URL equal to the alias's is the same one and stays.
    fn drop_unqualified_url(&self, alias_url: &str) -> Result<(), CommandError> {
        let name = &self.settings.function_name;
        let lambda = self.clients.lambda();
        let Ok(old) = self.block(lambda.get_function_url_config().function_name(name).send())
        else {
            return Ok(());
        };
        if old.function_url() == alias_url {
            return Ok(());
        }
        for statement in [
            URL_PERMISSION_ID.to_string(),
            format!("{URL_PERMISSION_ID}-invoke"),
        ] {
            let _ = self.block(
                lambda
                    .remove_permission()
                    .function_name(name)
                    .statement_id(statement)
                    .send(),
            );
        }
        self.block(
            lambda
                .delete_function_url_config()
                .function_name(name)
                .send(),
        )
        .map_err(|e| {
            sdk_error(
                &format!("failed to delete the old Function URL of `{name}` (on `$LATEST`)"),
                e,
            )
        })?;
        eprintln!(
            "note: the Function URL moved to the alias `{ALIAS}`: `{}` is gone, `{alias_url}` serves",
            old.function_url()
        );
        Ok(())
    }

    fn delete(
        &self,
        resource: &Resource,
        options: DestroyOptions,
    ) -> Result<(Option<Kept>, String), CommandError> {
        let name = resource.name.as_str();
        let gone = |result: Result<(), (Option<String>, CommandError)>, missing: &str| match result
        {
            Ok(()) => Ok((None, "deleted".to_string())),
            Err((Some(code), _)) if code == missing => Ok((None, "already gone".to_string())),
            Err((_, error)) => Err(error),
        };
        let lambda = self.clients.lambda();
        let iam = self.clients.iam();
        match resource.kind.as_str() {
            kind::ENDPOINT => {
                for statement in [
                    URL_PERMISSION_ID.to_string(),
                    format!("{URL_PERMISSION_ID}-invoke"),
                ] {
                    let _ = self.block(
                        lambda
                            .remove_permission()
                            .function_name(name)
                            .qualifier(ALIAS)
                            .statement_id(statement)
                            .send(),
                    );
                }
                gone(
                    self.block(
                        lambda
                            .delete_function_url_config()
                            .function_name(name)
                            .qualifier(ALIAS)
                            .send(),
                    )
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            code(&e).map(str::to_string),
                            sdk_error(&format!("failed to delete the Function URL of `{name}`"), e),
                        )
                    }),
                    "ResourceNotFoundException",
                )
            }
            kind::FUNCTION => gone(
                self.block(lambda.delete_function().function_name(name).send())
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            code(&e).map(str::to_string),
                            sdk_error(&format!("failed to delete function `{name}`"), e),
                        )
                    }),
                "ResourceNotFoundException",
            ),
            kind::ROLE => {
                let _ = self.block(
                    iam.delete_role_policy()
                        .role_name(name)
                        .policy_name(POLICY_NAME)
                        .send(),
                );
                gone(
                    self.block(iam.delete_role().role_name(name).send())
                        .map(|_| ())
                        .map_err(|e| {
                            (
                                code(&e).map(str::to_string),
                                sdk_error(&format!("failed to delete role `{name}`"), e),
                            )
                        }),
                    "NoSuchEntity",
                )
            }
            kind::SECRET => gone(
                self.block(
                    self.clients
                        .secrets()
                        .delete_secret()
                        .secret_id(name)
                        .recovery_window_in_days(SECRET_RECOVERY_DAYS)
                        .send(),
                )
                .map(|_| ())
                .map_err(|e| {
                    (
                        code(&e).map(str::to_string),
                        sdk_error(&format!("failed to delete secret `{name}`"), e),
                    )
                }),
                "ResourceNotFoundException",
            ),
            kind::BUCKET => {
                // The prefix recorded when `up` made the bucket: the config
                // may name another bucket or prefix by now.
                let left = match resource.data_prefix() {
                    Some(prefix) => self.buckets().delete(name, prefix, options)?,
                    None => self
                        .buckets()
                        .delete(name, "", DestroyOptions { delete_data: false })?
                        .map(|_| Kept::bucket_without_prefix(name)),
                };
                match left {
                    Some(kept) => Ok((Some(kept), "kept: it holds objects".to_string())),
                    None => Ok((None, "deleted".to_string())),
                }
            }
            other => Err(CommandError::new(
                format!("the state records a `{other}` resource the AWS engine does not know"),
                "delete it by hand, then remove it from the state file",
                1,
            )),
        }
    }
}

/// Publishes what `$LATEST` runs now as a version (Lambda returns the
/// newest version instead when nothing changed since it): its number, its
/// `CodeSha256`, and whether it is new.
pub fn publish_version(
    clients: &AwsClients,
    function: &str,
) -> Result<(String, String, bool), CommandError> {
    let lambda = clients.lambda();
    let newest = |clients: &AwsClients| -> Result<Option<String>, CommandError> {
        let mut newest: Option<u64> = None;
        let mut marker: Option<String> = None;
        loop {
            let page = clients
                .runtime
                .block_on(
                    lambda
                        .list_versions_by_function()
                        .function_name(function)
                        .set_marker(marker.clone())
                        .send(),
                )
                .map_err(|e| {
                    sdk_error(&format!("failed to list the versions of `{function}`"), e)
                })?;
            for version in page.versions() {
                if let Some(number) = version.version().and_then(|v| v.parse::<u64>().ok()) {
                    newest = Some(newest.map_or(number, |n| n.max(number)));
                }
            }
            marker = page.next_marker().map(str::to_string);
            if marker.is_none() {
                return Ok(newest.map(|n| n.to_string()));
            }
        }
    };
    // Nothing to publish when the alias already serves exactly what
    // `$LATEST` runs: an unchanged `up` makes no API writes.
    if let Some((version, code_sha256)) = live_matches_latest(clients, function)? {
        return Ok((version, code_sha256, false));
    }
    let before = newest(clients)?;
    let published = clients
        .runtime
        .block_on(lambda.publish_version().function_name(function).send())
        .map_err(|e| sdk_error(&format!("failed to publish a version of `{function}`"), e))?;
    let version = published.version().unwrap_or_default().to_string();
    let code_sha256 = published.code_sha256().unwrap_or_default().to_string();
    let new = before.as_deref() != Some(version.as_str());
    Ok((version, code_sha256, new))
}

/// The version the alias [`ALIAS`] points at and its `CodeSha256`, when
/// that version's code and configuration are those of `$LATEST` (a rollback
/// leaves the alias on an older version: then they differ).
fn live_matches_latest(
    clients: &AwsClients,
    function: &str,
) -> Result<Option<(String, String)>, CommandError> {
    let lambda = clients.lambda();
    let alias = match clients.runtime.block_on(
        lambda
            .get_alias()
            .function_name(function)
            .name(ALIAS)
            .send(),
    ) {
        Ok(alias) => alias,
        Err(error) if code(&error) == Some("ResourceNotFoundException") => return Ok(None),
        Err(error) => {
            return Err(sdk_error(
                &format!("failed to read alias `{ALIAS}` of `{function}`"),
                error,
            ));
        }
    };
    let Some(version) = alias.function_version().map(str::to_string) else {
        return Ok(None);
    };
    let configuration = |qualifier: &str| {
        clients
            .runtime
            .block_on(
                lambda
                    .get_function_configuration()
                    .function_name(function)
                    .qualifier(qualifier)
                    .send(),
            )
            .map_err(|e| {
                sdk_error(
                    &format!("failed to read `{function}` version `{qualifier}`"),
                    e,
                )
            })
    };
    let live = configuration(&version)?;
    let latest = configuration("$LATEST")?;
    let variables = |c: &aws_sdk_lambda::operation::get_function_configuration::GetFunctionConfigurationOutput| {
        c.environment().and_then(|e| e.variables()).cloned()
    };
    let same = live.code_sha256() == latest.code_sha256()
        && variables(&live) == variables(&latest)
        && live.role() == latest.role()
        && live.handler() == latest.handler()
        && live.runtime() == latest.runtime()
        && live.memory_size() == latest.memory_size()
        && live.timeout() == latest.timeout()
        && live.architectures() == latest.architectures()
        && live.layers() == latest.layers();
    Ok(same.then(|| (version, live.code_sha256().unwrap_or_default().to_string())))
}

/// Points the alias [`ALIAS`] at `version`, creating it the first time.
pub fn point_alias(
    clients: &AwsClients,
    function: &str,
    version: &str,
) -> Result<((), String), CommandError> {
    let lambda = clients.lambda();
    let current = clients.runtime.block_on(
        lambda
            .get_alias()
            .function_name(function)
            .name(ALIAS)
            .send(),
    );
    match current {
        Ok(alias) if alias.function_version() == Some(version) => {
            Ok(((), format!("{version}, unchanged")))
        }
        Ok(alias) => {
            clients
                .runtime
                .block_on(
                    lambda
                        .update_alias()
                        .function_name(function)
                        .name(ALIAS)
                        .function_version(version)
                        .send(),
                )
                .map_err(|e| {
                    sdk_error(
                        &format!("failed to move alias `{ALIAS}` of `{function}`"),
                        e,
                    )
                })?;
            Ok((
                (),
                format!(
                    "moved from {} to {version}",
                    alias.function_version().unwrap_or("?")
                ),
            ))
        }
        Err(error) if code(&error) == Some("ResourceNotFoundException") => {
            clients
                .runtime
                .block_on(
                    lambda
                        .create_alias()
                        .function_name(function)
                        .name(ALIAS)
                        .function_version(version)
                        .send(),
                )
                .map_err(|e| {
                    sdk_error(
                        &format!("failed to make alias `{ALIAS}` of `{function}`"),
                        e,
                    )
                })?;
            Ok(((), format!("made at {version}")))
        }
        Err(error) => Err(sdk_error(
            &format!("failed to read alias `{ALIAS}` of `{function}`"),
            error,
        )),
    }
}

/// IAM returns policy documents URL-encoded; moto returns them plain.
fn policy_json(text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(text)).ok())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(byte) = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(if bytes[index] == b'+' {
            b' '
        } else {
            bytes[index]
        });
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Engine for AwsEngine {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn desired(&self) -> Result<Vec<Resource>, CommandError> {
        Ok(self.settings.desired(
            self.package
                .as_deref()
                .map(crate::plan::package_hash)
                .as_deref(),
        ))
    }

    fn apply(
        &self,
        desired: &[Resource],
        progress: &mut Progress,
        made: &mut dyn FnMut(Resource) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        let account = progress.step("account", || {
            let account = self.account()?;
            let outcome = format!("{account} in {}", self.settings.region);
            Ok((account, outcome))
        })?;
        let settings_of = |kind: &str| {
            desired
                .iter()
                .find(|r| r.kind == kind)
                .map(|r| r.settings.clone())
                .unwrap_or_default()
        };
        let with_settings = |mut resource: Resource| {
            resource.settings = settings_of(&resource.kind);
            resource
        };
        if let Some(bucket) = &self.settings.bucket {
            let resource = progress.step(&format!("bucket `{}`", bucket.name), || {
                self.buckets().ensure(bucket)
            })?;
            made(with_settings(resource))?;
        }
        let secret = progress.step(&format!("secret `{}`", self.settings.secret_name), || {
            self.ensure_secret()
        })?;
        let secret_arn = secret.outputs.get("arn").cloned().unwrap_or_default();
        made(with_settings(secret))?;
        let role = progress.step(&format!("role `{}`", self.settings.role_name), || {
            self.ensure_role(&account, &secret_arn)
        })?;
        let role_arn = role.outputs.get("arn").cloned().unwrap_or_default();
        made(with_settings(role))?;
        let function = progress.step(
            &format!("function `{}`", self.settings.function_name),
            || {
                let keys = self.read_keys()?;
                self.ensure_function(&account, &role_arn, &keys)
            },
        )?;
        let mut function = with_settings(function);
        made(function.clone())?;
        let (version, code_sha256) = progress.step(
            &format!("version of `{}`", self.settings.function_name),
            || {
                let (version, code_sha256, new) =
                    publish_version(&self.clients, &self.settings.function_name)?;
                let outcome = if new {
                    format!("published {version}")
                } else {
                    format!("{version}, unchanged")
                };
                Ok(((version, code_sha256), outcome))
            },
        )?;
        progress.step(
            &format!("alias `{ALIAS}` of `{}`", self.settings.function_name),
            || point_alias(&self.clients, &self.settings.function_name, &version),
        )?;
        function.outputs.insert("version".into(), version);
        function.outputs.insert("code_sha256".into(), code_sha256);
        made(function)?;
        let endpoint = progress.step(
            &format!("function URL of `{}`", self.settings.function_name),
            || self.ensure_endpoint(),
        )?;
        made(with_settings(endpoint))?;
        Ok(())
    }

    fn refresh(&self, recorded: &Resource) -> Result<crate::engine::Live, CommandError> {
        use crate::engine::Live;
        let exists = |found: bool| {
            if found {
                Live::Present(Default::default())
            } else {
                Live::Missing
            }
        };
        let not_found = |code: Option<&str>| {
            matches!(
                code,
                Some("ResourceNotFoundException" | "NoSuchEntity" | "NotFound")
            )
        };
        let name = recorded.name.as_str();
        match recorded.kind.as_str() {
            kind::BUCKET => {
                let prefix = recorded.data_prefix().unwrap_or("");
                Ok(match self.buckets().live(name, prefix)? {
                    Some(live) => Live::Present(live),
                    None => Live::Missing,
                })
            }
            kind::SECRET => {
                let found = self.block(
                    self.clients
                        .secrets()
                        .describe_secret()
                        .secret_id(name)
                        .send(),
                );
                match found {
                    Ok(secret) => Ok(exists(secret.deleted_date().is_none())),
                    Err(error) if not_found(code(&error)) => Ok(Live::Missing),
                    Err(error) => Err(sdk_error(&format!("failed to read secret `{name}`"), error)),
                }
            }
            kind::ROLE => match self.block(self.clients.iam().get_role().role_name(name).send()) {
                Ok(_) => Ok(exists(true)),
                Err(error) if not_found(code(&error)) => Ok(Live::Missing),
                Err(error) => Err(sdk_error(&format!("failed to read role `{name}`"), error)),
            },
            kind::FUNCTION => match self.block(
                self.clients
                    .lambda()
                    .get_function_configuration()
                    .function_name(name)
                    .send(),
            ) {
                Ok(_) => Ok(exists(true)),
                Err(error) if not_found(code(&error)) => Ok(Live::Missing),
                Err(error) => Err(sdk_error(
                    &format!("failed to read function `{name}`"),
                    error,
                )),
            },
            kind::ENDPOINT => match self.block(
                self.clients
                    .lambda()
                    .get_function_url_config()
                    .function_name(name)
                    .qualifier(ALIAS)
                    .send(),
            ) {
                Ok(_) => Ok(exists(true)),
                Err(error) if not_found(code(&error)) => Ok(Live::Missing),
                Err(error) => Err(sdk_error(
                    &format!("failed to read the URL of `{name}`"),
                    error,
                )),
            },
            _ => Ok(Live::Unknown),
        }
    }

    fn rollback(
        &self,
        release: &crate::releases::Release,
        progress: &mut Progress,
    ) -> Result<(), CommandError> {
        use crate::releases::{RollbackError, restore};
        let name = &self.settings.function_name;
        let gone = |what: String| RollbackError::ArtifactGone {
            target: self.settings.target.clone(),
            id: release.id,
            what,
        };
        let version = release
            .restore
            .get(restore::LAMBDA_VERSION)
            .ok_or_else(|| gone("it recorded no Lambda version".into()))?;
        let found = self.block(
            self.clients
                .lambda()
                .get_function_configuration()
                .function_name(name)
                .qualifier(version)
                .send(),
        );
        let configuration = match found {
            Ok(configuration) => configuration,
            Err(error) if code(&error) == Some("ResourceNotFoundException") => {
                return Err(gone(format!(
                    "version {version} of function `{name}` was deleted"
                ))
                .into());
            }
            Err(error) => {
                return Err(sdk_error(
                    &format!("failed to read version {version} of function `{name}`"),
                    error,
                ));
            }
        };
        if configuration.code_sha256() != Some(release.artifact.digest.as_str()) {
            return Err(gone(format!(
                "version {version} of function `{name}` runs code `{}`, not the release's `{}`",
                configuration.code_sha256().unwrap_or("?"),
                release.artifact.digest
            ))
            .into());
        }
        self.check_keys_verify_live_tokens(release, &configuration)?;
        progress.step(&format!("alias `{ALIAS}` of `{name}`"), || {
            point_alias(&self.clients, name, version)
        })?;
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
            Ok((
                (),
                "every resource carries this deployment's tag".to_string(),
            ))
        })?;
        let mut kept = Vec::new();
        for resource in state.resources.iter().rev() {
            let left = progress.step(&resource.address(), || self.delete(resource, options))?;
            match left {
                Some(left) => kept.push(left),
                None => removed(resource)?,
            }
        }
        Ok(kept)
    }
}

impl AwsEngine {
    /// A Lambda version keeps the environment it was published with, the
    /// signing keys included, and `secrets rotate` publishes new ones: a
    /// version from before a rotation must not go live again when it would
    /// not verify what the live version signs.
    fn check_keys_verify_live_tokens(
        &self,
        release: &crate::releases::Release,
        target: &aws_sdk_lambda::operation::get_function_configuration::GetFunctionConfigurationOutput,
    ) -> Result<(), CommandError> {
        use crate::secrets::store::Secret;
        let name = &self.settings.function_name;
        let live = self.block(
            self.clients
                .lambda()
                .get_function_configuration()
                .function_name(name)
                .qualifier(ALIAS)
                .send(),
        );
        let live = live.map_err(|error| {
            sdk_error(
                &format!("failed to read the live version of function `{name}`"),
                error,
            )
        })?;
        let variables = |configuration: Option<&aws_sdk_lambda::types::EnvironmentResponse>| {
            configuration
                .and_then(|environment| environment.variables())
                .cloned()
                .unwrap_or_default()
        };
        let (live, target) = (
            variables(live.environment()),
            variables(target.environment()),
        );
        let Some(signing) = live.get(KEY_VARIABLE) else {
            return Ok(());
        };
        let verifies = |key: &str| {
            target.get(KEY_VARIABLE).map(String::as_str) == Some(key)
                || target
                    .get(PREVIOUS_KEY_VARIABLE)
                    .is_some_and(|previous| previous.split(',').any(|p| p.trim() == key))
        };
        if verifies(signing) {
            return Ok(());
        }
        let fingerprint = |key: Option<&String>| {
            key.map_or_else(
                || "(none)".to_string(),
                |key| Secret::new(key.clone()).fingerprint(),
            )
        };
        Err(crate::releases::RollbackError::KeysRotatedSince {
            target: self.settings.target.clone(),
            id: release.id,
            release_key: fingerprint(target.get(KEY_VARIABLE)),
            live_key: fingerprint(Some(signing)),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_compare_after_url_decoding() {
        let plain = r#"{"Version":"2012-10-17","Statement":[]}"#;
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(policy_json(plain), policy_json(encoded));
        assert!(policy_json(plain).is_some());
    }
}
