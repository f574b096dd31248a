//! The S3 bucket step, shared by the AWS engine and the compose engine
//! (SeaweedFS or any S3-compatible store): create the bucket when missing,
//! put deploy-kit's lifecycle rules (expiry on the prefix, abort incomplete
//! multipart uploads) and CORS when they differ, and read both back through
//! the storage probe to verify them; on `down`, delete it (emptied only with
//! `--delete-data`).

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CorsConfiguration, CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration,
    LifecycleRuleFilter,
};
use kit_checks::probe::{StorageError, StorageProbe};

use super::clients::{AwsClients, code, describe};
use super::{ABORT_MULTIPART_RULE_ID, BucketSettings, EXPIRE_RULE_ID};
use crate::CommandError;
use crate::engine::owner::{Claim, Owner, TAG_KEY};
use crate::engine::{DestroyOptions, Kept, Resource, kind};
use crate::s3_probe::S3StorageProbe;

/// One store's buckets: the clients, the region buckets are made in, the
/// endpoint override the read-back probe uses, and the hint for failures.
#[derive(Debug)]
pub struct Buckets<'a> {
    pub clients: &'a AwsClients,
    pub region: &'a str,
    /// `storage.endpoint` (SeaweedFS, MinIO); `None` for AWS itself.
    pub endpoint: Option<&'a str>,
    /// The target, for the `down --delete-data` command in a kept bucket.
    pub target: &'a str,
    /// The `hint:` of a failed call (credentials, endpoint).
    pub hint: &'a str,
    /// Whose buckets these are: `ensure` tags what it creates and refuses
    /// to take over another deployment's bucket. `None` (compose on a
    /// local store) checks nothing.
    pub owner: Option<&'a Owner>,
}

impl Buckets<'_> {
    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.clients.runtime.block_on(future)
    }

    fn sdk_error<E>(&self, what: &str, error: aws_sdk_s3::error::SdkError<E>) -> CommandError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        CommandError::new(format!("{what}: {}", describe(&error)), self.hint, 1)
    }

    fn storage_error(&self, what: &str, error: StorageError) -> CommandError {
        let (StorageError::Rejected(reason) | StorageError::Unavailable(reason)) = error;
        CommandError::new(format!("{what}: {reason}"), self.hint, 1)
    }

    /// A probe with its own clients, to read back what was set.
    fn probe(&self, bucket: &str) -> Result<S3StorageProbe, CommandError> {
        Ok(S3StorageProbe::new(
            AwsClients::new(self.region, self.endpoint)?,
            bucket,
        ))
    }

    pub fn ensure(&self, bucket: &BucketSettings) -> Result<(Resource, String), CommandError> {
        let s3 = &self.clients.s3;
        let mut changed = Vec::new();
        let head = self.block(s3.head_bucket().bucket(&bucket.name).send());
        let created = match head {
            Ok(_) => {
                if let Some(owner) = self.owner {
                    let found = self.deployment_tag(&bucket.name)?;
                    if owner.claim(kind::BUCKET, &bucket.name, found.as_deref())? == Claim::Take {
                        self.tag(&bucket.name, owner)?;
                        changed.push("ownership tag");
                    }
                }
                false
            }
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                let mut request = s3.create_bucket().bucket(&bucket.name);
                if self.region != "us-east-1" {
                    request = request.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(self.region))
                            .build(),
                    );
                }
                self.block(request.send()).map_err(|e| {
                    self.sdk_error(&format!("failed to create bucket `{}`", bucket.name), e)
                })?;
                if let Some(owner) = self.owner {
                    self.tag(&bucket.name, owner)?;
                }
                true
            }
            Err(error)
                if error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 403) =>
            {
                return Err(CommandError::new(
                    format!(
                        "bucket `{}` exists and these credentials may not use it (403): it is another account's, or the identity lacks s3:ListBucket",
                        bucket.name
                    ),
                    "bucket names are global in S3: choose another `storage.bucket`, or use the credentials of the account that owns it",
                    2,
                ));
            }
            Err(error) => {
                return Err(self.sdk_error(
                    &format!("failed to look up bucket `{}`", bucket.name),
                    error,
                ));
            }
        };
        let probe = self.probe(&bucket.name)?;
        if self.ensure_lifecycle(bucket, &probe)? {
            changed.push("lifecycle");
        }
        if self.ensure_cors(bucket, &probe)? {
            changed.push("cors");
        }
        let mut resource = Resource::new(kind::BUCKET, &bucket.name);
        resource
            .outputs
            .insert("arn".into(), format!("arn:aws:s3:::{}", bucket.name));
        let outcome = if created {
            "created, lifecycle and CORS verified".to_string()
        } else if changed.is_empty() {
            "unchanged, lifecycle and CORS verified".to_string()
        } else {
            format!("updated {}, verified", changed.join(" and "))
        };
        Ok((resource, outcome))
    }

    /// Puts deploy-kit's rules (keeping any others) when they differ, then
    /// reads them back. Returns whether it changed anything.
    fn ensure_lifecycle(
        &self,
        bucket: &BucketSettings,
        probe: &S3StorageProbe,
    ) -> Result<bool, CommandError> {
        let matches = |rules: &[kit_checks::probe::LifecycleRule]| {
            let expire = bucket.expiration_days.is_none_or(|days| {
                rules.iter().any(|r| {
                    r.enabled && r.prefix == bucket.prefix && r.expiration_days == Some(days)
                })
            });
            let abort = bucket.abort_multipart_days.is_none_or(|days| {
                rules.iter().any(|r| {
                    r.enabled
                        && r.prefix == bucket.prefix
                        && r.abort_incomplete_multipart_days == Some(days)
                })
            });
            expire && abort
        };
        let read = |what: &str| {
            probe.lifecycle_rules().map_err(|e| {
                self.storage_error(
                    &format!(
                        "failed to read the lifecycle rules of bucket `{}` {what}",
                        bucket.name
                    ),
                    e,
                )
            })
        };
        if matches(&read("")?) {
            return Ok(false);
        }
        let s3 = &self.clients.s3;
        let current = match self.block(
            s3.get_bucket_lifecycle_configuration()
                .bucket(&bucket.name)
                .send(),
        ) {
            Ok(output) => output.rules().to_vec(),
            Err(error) if code(&error) == Some("NoSuchLifecycleConfiguration") => Vec::new(),
            Err(error) => {
                return Err(self.sdk_error(
                    &format!(
                        "failed to read the lifecycle rules of bucket `{}`",
                        bucket.name
                    ),
                    error,
                ));
            }
        };
        let ours =
            |id: Option<&str>| id == Some(EXPIRE_RULE_ID) || id == Some(ABORT_MULTIPART_RULE_ID);
        let mut rules: Vec<_> = current.into_iter().filter(|r| !ours(r.id())).collect();
        let filter = || {
            LifecycleRuleFilter::builder()
                .prefix(&bucket.prefix)
                .build()
        };
        let build_error = |e: aws_sdk_s3::error::BuildError| {
            CommandError::new(format!("lifecycle rule: {e}"), "", 1)
        };
        if let Some(days) = bucket.expiration_days {
            rules.push(
                aws_sdk_s3::types::LifecycleRule::builder()
                    .id(EXPIRE_RULE_ID)
                    .status(ExpirationStatus::Enabled)
                    .filter(filter())
                    .expiration(LifecycleExpiration::builder().days(days as i32).build())
                    .build()
                    .map_err(build_error)?,
            );
        }
        if let Some(days) = bucket.abort_multipart_days {
            rules.push(
                aws_sdk_s3::types::LifecycleRule::builder()
                    .id(ABORT_MULTIPART_RULE_ID)
                    .status(ExpirationStatus::Enabled)
                    .filter(filter())
                    .abort_incomplete_multipart_upload(
                        AbortIncompleteMultipartUpload::builder()
                            .days_after_initiation(days as i32)
                            .build(),
                    )
                    .build()
                    .map_err(build_error)?,
            );
        }
        let configuration = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(build_error)?;
        self.block(
            s3.put_bucket_lifecycle_configuration()
                .bucket(&bucket.name)
                .lifecycle_configuration(configuration)
                .send(),
        )
        .map_err(|e| {
            self.sdk_error(
                &format!(
                    "failed to set the lifecycle rules of bucket `{}`",
                    bucket.name
                ),
                e,
            )
        })?;
        let read_back = read("after setting them")?;
        if !matches(&read_back) {
            return Err(CommandError::new(
                format!(
                    "bucket `{}` did not keep the lifecycle rules for prefix `{}` (read back: {read_back:?})",
                    bucket.name, bucket.prefix
                ),
                "the store may not support lifecycle rules; set them by hand and check with `deploy-kit doctor --online`",
                1,
            ));
        }
        Ok(true)
    }

    fn ensure_cors(
        &self,
        bucket: &BucketSettings,
        probe: &S3StorageProbe,
    ) -> Result<bool, CommandError> {
        if bucket.cors_origins.is_empty() {
            return Ok(false);
        }
        let matches = |rules: &[kit_checks::probe::CorsRule]| {
            rules.iter().any(|rule| {
                bucket.cors_origins.iter().all(|o| rule.origins.contains(o))
                    && ["GET", "PUT"]
                        .iter()
                        .all(|m| rule.methods.iter().any(|have| have == m))
            })
        };
        let read = || {
            probe.cors_rules().map_err(|e| {
                self.storage_error(
                    &format!("failed to read the CORS rules of bucket `{}`", bucket.name),
                    e,
                )
            })
        };
        if matches(&read()?) {
            return Ok(false);
        }
        let build_error =
            |e: aws_sdk_s3::error::BuildError| CommandError::new(format!("CORS rule: {e}"), "", 1);
        let rule = aws_sdk_s3::types::CorsRule::builder()
            .set_allowed_origins(Some(bucket.cors_origins.clone()))
            .allowed_methods("GET")
            .allowed_methods("PUT")
            .allowed_methods("HEAD")
            .allowed_headers("*")
            .expose_headers("ETag")
            .max_age_seconds(3600)
            .build()
            .map_err(build_error)?;
        let configuration = CorsConfiguration::builder()
            .cors_rules(rule)
            .build()
            .map_err(build_error)?;
        self.block(
            self.clients
                .s3
                .put_bucket_cors()
                .bucket(&bucket.name)
                .cors_configuration(configuration)
                .send(),
        )
        .map_err(|e| {
            self.sdk_error(
                &format!("failed to set the CORS rules of bucket `{}`", bucket.name),
                e,
            )
        })?;
        let read_back = read()?;
        if !matches(&read_back) {
            return Err(CommandError::new(
                format!(
                    "bucket `{}` did not keep the CORS rule for {} (read back: {read_back:?})",
                    bucket.name,
                    bucket.cors_origins.join(", ")
                ),
                "set the bucket's CORS by hand and check with `deploy-kit doctor --online`",
                1,
            ));
        }
        Ok(true)
    }

    /// The bucket's live lifecycle and CORS under the keys `desired` uses
    /// (`plan --refresh`); `None` when the bucket is gone. The rules read
    /// are the ones covering `prefix`, whichever id they carry.
    pub fn live(
        &self,
        name: &str,
        prefix: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, Option<String>>>, CommandError> {
        use crate::engine::setting;
        match self.block(self.clients.s3.head_bucket().bucket(name).send()) {
            Ok(_) => {}
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                return Ok(None);
            }
            Err(error) => {
                return Err(self.sdk_error(&format!("failed to look up bucket `{name}`"), error));
            }
        }
        let probe = self.probe(name)?;
        let rules = probe.lifecycle_rules().map_err(|e| {
            self.storage_error(&format!("failed to read the lifecycle of `{name}`"), e)
        })?;
        let covering = |pick: fn(&kit_checks::probe::LifecycleRule) -> Option<u32>| {
            rules
                .iter()
                .filter(|r| r.enabled && r.covers(prefix))
                .filter_map(pick)
                .min()
                .map(|days| days.to_string())
        };
        let cors = probe
            .cors_rules()
            .map_err(|e| self.storage_error(&format!("failed to read the CORS of `{name}`"), e))?;
        let origins: Vec<String> = cors.iter().flat_map(|r| r.origins.clone()).collect();
        let mut live = std::collections::BTreeMap::new();
        live.insert(
            setting::LIFECYCLE_EXPIRATION_DAYS.to_string(),
            covering(|r| r.expiration_days),
        );
        live.insert(
            setting::LIFECYCLE_ABORT_MULTIPART_DAYS.to_string(),
            covering(|r| r.abort_incomplete_multipart_days),
        );
        live.insert(
            setting::CORS_ORIGINS.to_string(),
            (!origins.is_empty()).then(|| origins.join(",")),
        );
        Ok(Some(live))
    }

    /// The value of bucket `name`'s [`TAG_KEY`] tag; `None` when it has none.
    pub fn deployment_tag(&self, name: &str) -> Result<Option<String>, CommandError> {
        match self.block(self.clients.s3.get_bucket_tagging().bucket(name).send()) {
            Ok(tagging) => Ok(tagging
                .tag_set()
                .iter()
                .find(|tag| tag.key() == TAG_KEY)
                .map(|tag| tag.value().to_string())),
            Err(error) if code(&error) == Some("NoSuchTagSet") => Ok(None),
            Err(error) => Err(self.sdk_error(
                &format!("failed to read the tags of bucket `{name}`"),
                error,
            )),
        }
    }

    /// Puts `owner`'s tags on bucket `name`, keeping its other tags.
    fn tag(&self, name: &str, owner: &Owner) -> Result<(), CommandError> {
        use aws_sdk_s3::types::{Tag, Tagging};
        let s3 = &self.clients.s3;
        let mut tags: Vec<Tag> = match self.block(s3.get_bucket_tagging().bucket(name).send()) {
            Ok(tagging) => tagging.tag_set().to_vec(),
            Err(_) => Vec::new(),
        };
        let ours = owner.tags();
        tags.retain(|tag| !ours.iter().any(|(key, _)| *key == tag.key()));
        for (key, value) in ours {
            tags.push(
                Tag::builder()
                    .key(key)
                    .value(value)
                    .build()
                    .expect("key and value are set"),
            );
        }
        let tagging = Tagging::builder()
            .set_tag_set(Some(tags))
            .build()
            .expect("the tag set is set");
        self.block(s3.put_bucket_tagging().bucket(name).tagging(tagging).send())
            .map_err(|e| self.sdk_error(&format!("failed to tag bucket `{name}`"), e))?;
        Ok(())
    }

    /// Deletes bucket `name`; one that still holds objects is kept (and
    /// returned with the command that removes it) unless `delete_data`,
    /// which deletes only the objects under `prefix` (the service's): a
    /// bucket that still holds others is kept, with them.
    pub fn delete(
        &self,
        name: &str,
        prefix: &str,
        options: DestroyOptions,
    ) -> Result<Option<Kept>, CommandError> {
        let s3 = &self.clients.s3;
        let listed = match self.block(s3.list_objects_v2().bucket(name).max_keys(1).send()) {
            Ok(listed) => listed,
            Err(error) if code(&error) == Some("NoSuchBucket") => return Ok(None),
            Err(error) => {
                return Err(self.sdk_error(&format!("failed to list bucket `{name}`"), error));
            }
        };
        if !listed.contents().is_empty() {
            if !options.delete_data {
                return Ok(Some(Kept {
                    resource: Resource::new(kind::BUCKET, name),
                    reason: format!("bucket `{name}` still holds objects"),
                    command: format!("deploy-kit down {} --delete-data", self.target),
                }));
            }
            self.empty(name, prefix)?;
            let left = self
                .block(s3.list_objects_v2().bucket(name).max_keys(1).send())
                .map_err(|e| self.sdk_error(&format!("failed to list bucket `{name}`"), e))?;
            if let Some(other) = left.contents().first() {
                return Ok(Some(Kept {
                    resource: Resource::new(kind::BUCKET, name),
                    reason: format!(
                        "bucket `{name}` holds objects outside the service's prefix `{prefix}` (such as `{}`), which `--delete-data` does not delete",
                        other.key().unwrap_or_default()
                    ),
                    command: format!("aws s3 rb s3://{name} --force"),
                }));
            }
        }
        match self.block(s3.delete_bucket().bucket(name).send()) {
            Ok(_) => Ok(None),
            Err(error) if code(&error) == Some("NoSuchBucket") => Ok(None),
            Err(error) => Err(self.sdk_error(&format!("failed to delete bucket `{name}`"), error)),
        }
    }

    /// Deletes every object under `prefix` and aborts its multipart uploads.
    fn empty(&self, name: &str, prefix: &str) -> Result<(), CommandError> {
        let s3 = &self.clients.s3;
        loop {
            let listed = self
                .block(
                    s3.list_objects_v2()
                        .bucket(name)
                        .prefix(prefix)
                        .max_keys(1000)
                        .send(),
                )
                .map_err(|e| self.sdk_error(&format!("failed to list bucket `{name}`"), e))?;
            if listed.contents().is_empty() {
                break;
            }
            for object in listed.contents() {
                let key = object.key().unwrap_or_default();
                self.block(s3.delete_object().bucket(name).key(key).send())
                    .map_err(|e| {
                        self.sdk_error(&format!("failed to delete `{key}` from bucket `{name}`"), e)
                    })?;
            }
        }
        if let Ok(uploads) = self.block(
            s3.list_multipart_uploads()
                .bucket(name)
                .prefix(prefix)
                .send(),
        ) {
            for upload in uploads.uploads() {
                let _ = self.block(
                    s3.abort_multipart_upload()
                        .bucket(name)
                        .key(upload.key().unwrap_or_default())
                        .upload_id(upload.upload_id().unwrap_or_default())
                        .send(),
                );
            }
        }
        Ok(())
    }
}
