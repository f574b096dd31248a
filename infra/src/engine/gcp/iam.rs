//! IAM for the GCP engine (feature `gcp`): the runtime service account
//! (IAM v1 `projects.serviceAccounts` get, create, delete) and the
//! resource-level bindings it needs, each written by read-modify-write of
//! the one resource's policy:
//!
//! | resource | read | write |
//! |---|---|---|
//! | secret `projects/P/secrets/S` | `GET v1/{secret}:getIamPolicy` | `POST v1/{secret}:setIamPolicy` `{"policy"}` |
//! | bucket `projects/_/buckets/B` | `GET storage/v1/b/B/iam` | `PUT storage/v1/b/B/iam` (the policy) |
//! | account `projects/P/serviceAccounts/E` | `POST v1/{account}:getIamPolicy` | `POST v1/{account}:setIamPolicy` `{"policy"}` |
//!
//! The policy is sent back with the `etag` it was read with, so a write
//! that raced another one is refused (409 or 412) and retried from a fresh
//! read; bindings deploy-kit did not make, and conditional bindings, are
//! kept as read. A binding already present means no write at all, which is
//! what makes a second `up` read-only. Nothing is ever granted on the
//! project.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Grant;
use crate::gcp::{Client, GcpError, encode};

/// Where IAM v1 lives unless `DEPLOY_KIT_IAM_ENDPOINT` says otherwise.
pub const IAM_ENDPOINT: &str = "https://iam.googleapis.com";
/// The description deploy-kit gives the accounts it creates; `down` deletes
/// only accounts carrying it (service accounts have no labels).
pub const ACCOUNT_MARKER: &str = "managed-by: deploy-kit";
/// Attempts of one read-modify-write before a conflict is an error.
const ATTEMPTS: usize = 5;

/// The endpoints a grant's policy can live behind.
#[derive(Debug, Clone)]
pub struct IamApi {
    client: Arc<Client>,
    iam: String,
    secrets: String,
    storage: String,
    /// Pause before retrying a conflicting write, or a binding on an
    /// account IAM does not know yet (accounts are eventually consistent).
    pub retry_interval: Duration,
}

impl IamApi {
    pub fn new(client: Arc<Client>, iam: &str, secrets: &str, storage: &str) -> IamApi {
        let trim = |e: &str| e.trim_end_matches('/').to_string();
        IamApi {
            client,
            iam: trim(iam),
            secrets: trim(secrets),
            storage: trim(storage),
            retry_interval: Duration::from_secs(2),
        }
    }

    fn account_url(&self, project: &str, email: &str) -> String {
        format!(
            "{}/v1/projects/{}/serviceAccounts/{}",
            self.iam,
            encode(project),
            encode(email)
        )
    }

    /// The service account, or `None`.
    pub fn get_account(&self, project: &str, email: &str) -> Result<Option<Value>, GcpError> {
        match self.client.json(
            "GET",
            &self.account_url(project, email),
            None,
            &format!("get service account `{email}`"),
        ) {
            Ok(account) => Ok(Some(account)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates `account_id` in `project`, described as deploy-kit's.
    pub fn create_account(
        &self,
        project: &str,
        account_id: &str,
        service: &str,
    ) -> Result<Value, GcpError> {
        self.client.json(
            "POST",
            &format!(
                "{}/v1/projects/{}/serviceAccounts",
                self.iam,
                encode(project)
            ),
            Some(&json!({
                "accountId": account_id,
                "serviceAccount": {
                    "displayName": format!("{service} (kit-service runtime)"),
                    "description": format!("{ACCOUNT_MARKER}; runs Cloud Run service `{service}`"),
                },
            })),
            &format!("create service account `{account_id}` in project `{project}`"),
        )
    }

    /// Deletes the account; `false` when there was none.
    pub fn delete_account(&self, project: &str, email: &str) -> Result<bool, GcpError> {
        match self.client.send(
            "DELETE",
            &self.account_url(project, email),
            None,
            &format!("delete service account `{email}`"),
        ) {
            Ok(_) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// (method, url, body) reading and writing the policy of `resource`,
    /// and whether the write wraps the policy in `{"policy": ...}`.
    fn policy_calls(&self, resource: &str) -> Result<PolicyCalls, GcpError> {
        let parts: Vec<&str> = resource.split('/').collect();
        match parts.as_slice() {
            ["projects", project, "secrets", secret] => {
                let url = format!(
                    "{}/v1/projects/{}/secrets/{}",
                    self.secrets,
                    encode(project),
                    encode(secret)
                );
                Ok(PolicyCalls {
                    read: (
                        "GET",
                        format!("{url}:getIamPolicy?options.requestedPolicyVersion=3"),
                        None,
                    ),
                    write: ("POST", format!("{url}:setIamPolicy")),
                    wrap: true,
                })
            }
            ["projects", "_", "buckets", bucket] => {
                let url = format!("{}/storage/v1/b/{}/iam", self.storage, encode(bucket));
                Ok(PolicyCalls {
                    read: (
                        "GET",
                        format!("{url}?optionsRequestedPolicyVersion=3"),
                        None,
                    ),
                    write: ("PUT", url),
                    wrap: false,
                })
            }
            ["projects", project, "serviceAccounts", email] => {
                let url = self.account_url(project, email);
                Ok(PolicyCalls {
                    read: (
                        "POST",
                        format!("{url}:getIamPolicy"),
                        Some(json!({"options": {"requestedPolicyVersion": 3}})),
                    ),
                    write: ("POST", format!("{url}:setIamPolicy")),
                    wrap: true,
                })
            }
            _ => Err(GcpError::Decode {
                action: format!("grant on `{resource}`"),
                message: "not a secret, bucket or service account".into(),
            }),
        }
    }

    /// Reads the policy of `resource`; `None` when the resource is gone.
    fn read_policy(&self, resource: &str) -> Result<Option<Value>, GcpError> {
        let calls = self.policy_calls(resource)?;
        let (method, url, body) = &calls.read;
        match self.client.json(
            method,
            url,
            body.as_ref(),
            &format!("read the IAM policy of `{resource}`"),
        ) {
            Ok(policy) if policy.is_object() => Ok(Some(policy)),
            Ok(_) => Ok(Some(json!({}))),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn write_policy(&self, resource: &str, policy: &Value, what: &str) -> Result<(), GcpError> {
        let calls = self.policy_calls(resource)?;
        let (method, url) = &calls.write;
        let body = if calls.wrap {
            json!({ "policy": policy })
        } else {
            policy.clone()
        };
        self.client
            .json(method, url, Some(&body), &format!("{what} on `{resource}`"))
            .map(drop)
    }

    /// Adds the grant's member to its role; `false` (and no write) when
    /// the policy has it already.
    pub fn ensure(&self, grant: &Grant) -> Result<bool, GcpError> {
        let what = format!("grant `{}` to `{}`", grant.role, grant.member);
        self.read_modify_write(grant, &what, |policy| add_member(policy, grant))
    }

    /// Removes the grant's member from its role; `false` when it was not
    /// there or the resource is gone.
    pub fn revoke(&self, grant: &Grant) -> Result<bool, GcpError> {
        let what = format!("revoke `{}` from `{}`", grant.role, grant.member);
        self.read_modify_write(grant, &what, |policy| remove_member(policy, grant))
    }

    fn read_modify_write(
        &self,
        grant: &Grant,
        what: &str,
        change: impl Fn(&mut Value) -> bool,
    ) -> Result<bool, GcpError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(mut policy) = self.read_policy(&grant.resource)? else {
                return match what.starts_with("revoke") {
                    true => Ok(false),
                    false => Err(GcpError::Status {
                        action: format!("{what} on `{}`", grant.resource),
                        status: 404,
                        message: "the resource does not exist".into(),
                    }),
                };
            };
            if !change(&mut policy) {
                return Ok(false);
            }
            match self.write_policy(&grant.resource, &policy, what) {
                Ok(()) => return Ok(true),
                Err(error) if attempt < ATTEMPTS && retryable(&error) => {
                    std::thread::sleep(self.retry_interval);
                }
                Err(error) => return Err(error),
            }
        }
    }
}

struct PolicyCalls {
    read: (&'static str, String, Option<Value>),
    write: (&'static str, String),
    wrap: bool,
}

/// A raced write (etag mismatch: 409 on IAM and Secret Manager, 412 on
/// Cloud Storage), or a member IAM does not know yet right after the
/// account was created (400 "does not exist").
fn retryable(error: &GcpError) -> bool {
    match error {
        GcpError::Status {
            status: 409 | 412, ..
        } => true,
        GcpError::Status {
            status: 400,
            message,
            ..
        } => message.contains("does not exist"),
        _ => false,
    }
}

/// The unconditional binding of `role`, if any.
fn binding_of<'a>(bindings: &'a mut [Value], role: &str) -> Option<&'a mut Value> {
    bindings.iter_mut().find(|binding| {
        binding.get("role").and_then(Value::as_str) == Some(role)
            && binding.get("condition").is_none()
    })
}

/// True when the policy already grants `grant` unconditionally.
pub fn has_member(policy: &Value, grant: &Grant) -> bool {
    policy
        .get("bindings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|binding| {
            binding.get("role").and_then(Value::as_str) == Some(grant.role.as_str())
                && binding.get("condition").is_none()
                && binding
                    .get("members")
                    .and_then(Value::as_array)
                    .is_some_and(|members| members.iter().any(|m| m == grant.member.as_str()))
        })
}

/// Adds the member in place; `false` when it was there.
fn add_member(policy: &mut Value, grant: &Grant) -> bool {
    if has_member(policy, grant) {
        return false;
    }
    if !policy.is_object() {
        *policy = json!({});
    }
    let bindings = policy
        .as_object_mut()
        .expect("an object")
        .entry("bindings")
        .or_insert_with(|| json!([]));
    if !bindings.is_array() {
        *bindings = json!([]);
    }
    let list = bindings.as_array_mut().expect("an array");
    match binding_of(list, &grant.role) {
        Some(binding) => match binding.get_mut("members").and_then(Value::as_array_mut) {
            Some(members) => members.push(grant.member.clone().into()),
            None => binding["members"] = json!([grant.member]),
        },
        None => list.push(json!({"role": grant.role, "members": [grant.member]})),
    }
    true
}

/// Removes the member in place (and a binding left empty); `false` when
/// it was not there.
fn remove_member(policy: &mut Value, grant: &Grant) -> bool {
    if !has_member(policy, grant) {
        return false;
    }
    let Some(list) = policy.get_mut("bindings").and_then(Value::as_array_mut) else {
        return false;
    };
    if let Some(binding) = binding_of(list, &grant.role)
        && let Some(members) = binding.get_mut("members").and_then(Value::as_array_mut)
    {
        members.retain(|m| m != grant.member.as_str());
    }
    list.retain(|binding| {
        binding
            .get("members")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
    });
    true
}

/// True when deploy-kit created the account (its description says so).
pub fn is_ours(account: &Value) -> bool {
    account
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.starts_with(ACCOUNT_MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            resource: "projects/p/secrets/s".into(),
            role: "roles/secretmanager.secretAccessor".into(),
            member: "serviceAccount:a@p.iam.gserviceaccount.com".into(),
        }
    }

    #[test]
    fn adding_keeps_other_members_bindings_conditions_and_the_etag() {
        let mut policy = json!({"etag": "BwX=", "version": 3, "bindings": [
            {"role": "roles/secretmanager.secretAccessor", "members": ["user:x@y"],
             "condition": {"title": "t", "expression": "true"}},
            {"role": "roles/secretmanager.secretAccessor", "members": ["user:z@y"]},
            {"role": "roles/viewer", "members": ["user:v@y"]}]});
        assert!(add_member(&mut policy, &grant()));
        assert_eq!(policy["etag"], "BwX=");
        assert_eq!(policy["version"], 3);
        assert_eq!(
            policy["bindings"][1]["members"],
            json!(["user:z@y", "serviceAccount:a@p.iam.gserviceaccount.com"])
        );
        assert_eq!(policy["bindings"][0]["members"], json!(["user:x@y"]));
        assert!(!add_member(&mut policy, &grant()), "already there");

        assert!(remove_member(&mut policy, &grant()));
        assert_eq!(policy["bindings"][1]["members"], json!(["user:z@y"]));
        assert!(!remove_member(&mut policy, &grant()));
    }

    #[test]
    fn an_empty_policy_gets_one_binding_and_loses_it_again() {
        let mut policy = json!({"etag": "ACAB"});
        assert!(add_member(&mut policy, &grant()));
        assert_eq!(
            policy["bindings"],
            json!([{"role": "roles/secretmanager.secretAccessor",
                    "members": ["serviceAccount:a@p.iam.gserviceaccount.com"]}])
        );
        assert!(remove_member(&mut policy, &grant()));
        assert_eq!(policy["bindings"], json!([]));
    }

    #[test]
    fn a_conditional_binding_does_not_count_as_granted() {
        let policy = json!({"bindings": [{"role": "roles/secretmanager.secretAccessor",
            "members": ["serviceAccount:a@p.iam.gserviceaccount.com"],
            "condition": {"expression": "request.time < timestamp('2000-01-01T00:00:00Z')"}}]});
        assert!(!has_member(&policy, &grant()));
    }
}
