//! Cloud Run Admin API v2: the service that runs kit-service.
//!
//! Create, update and delete return long-running operations; they are
//! polled (`GET /v2/{operation}`) until `done`, and an operation `error`
//! becomes a [`GcpError::Status`]. Making a service public adds
//! `roles/run.invoker` for `allUsers` to its IAM policy, keeping the other
//! bindings. There is no Cloud Run emulator: the tests run this against a
//! fake on 127.0.0.1 that checks the requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Client, GcpError, encode};

/// Where a service lives: `projects/P/locations/R/services/S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    pub project: String,
    pub region: String,
    pub service: String,
}

impl ServiceName {
    pub fn resource(&self) -> String {
        format!(
            "projects/{}/locations/{}/services/{}",
            self.project, self.region, self.service
        )
    }

    fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.region)
    }
}

/// Cloud Run at one endpoint.
#[derive(Debug, Clone)]
pub struct RunApi {
    client: Arc<Client>,
    endpoint: String,
    /// Longest wait for one operation.
    pub operation_timeout: Duration,
    /// Pause between polls of an unfinished operation.
    pub poll_interval: Duration,
}

impl RunApi {
    pub fn new(client: Arc<Client>, endpoint: &str) -> RunApi {
        RunApi {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            operation_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(2),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.endpoint)
    }

    /// The service resource, or `None`.
    pub fn get(&self, name: &ServiceName) -> Result<Option<Value>, GcpError> {
        match self.client.json(
            "GET",
            &self.url(&name.resource()),
            None,
            &format!("get Cloud Run service `{}`", name.resource()),
        ) {
            Ok(service) => Ok(Some(service)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates the service and waits for it to be ready.
    pub fn create(&self, name: &ServiceName, service: &Value) -> Result<Value, GcpError> {
        let action = format!("create Cloud Run service `{}`", name.resource());
        let operation = self.client.json(
            "POST",
            &format!(
                "{}/services?serviceId={}",
                self.url(&name.parent()),
                encode(&name.service)
            ),
            Some(service),
            &action,
        )?;
        self.wait(operation, &action)
    }

    /// Replaces the service's spec (a new revision) and waits.
    pub fn update(&self, name: &ServiceName, service: &Value) -> Result<Value, GcpError> {
        let action = format!("update Cloud Run service `{}`", name.resource());
        let operation =
            self.client
                .json("PATCH", &self.url(&name.resource()), Some(service), &action)?;
        self.wait(operation, &action)
    }

    /// Deletes the service and waits; `false` when there was none.
    pub fn delete(&self, name: &ServiceName) -> Result<bool, GcpError> {
        let action = format!("delete Cloud Run service `{}`", name.resource());
        match self
            .client
            .json("DELETE", &self.url(&name.resource()), None, &action)
        {
            Ok(operation) => self.wait(operation, &action).map(|_| true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Lets anyone invoke the service (`allUsers` as `roles/run.invoker`);
    /// `false` when the policy already did.
    pub fn allow_public(&self, name: &ServiceName) -> Result<bool, GcpError> {
        let resource = name.resource();
        let mut policy = self.client.json(
            "GET",
            &format!("{}:getIamPolicy", self.url(&resource)),
            None,
            &format!("read the IAM policy of `{resource}`"),
        )?;
        if !policy.is_object() {
            policy = json!({});
        }
        let public = |binding: &Value| {
            binding.get("role").and_then(Value::as_str) == Some(INVOKER)
                && binding
                    .get("members")
                    .and_then(Value::as_array)
                    .is_some_and(|m| m.iter().any(|m| m == ALL_USERS))
        };
        let bindings = policy
            .as_object_mut()
            .expect("an object")
            .entry("bindings")
            .or_insert_with(|| json!([]));
        let Some(list) = bindings.as_array_mut() else {
            return Err(GcpError::Decode {
                action: format!("read the IAM policy of `{resource}`"),
                message: "`bindings` is not a list".into(),
            });
        };
        if list.iter().any(public) {
            return Ok(false);
        }
        match list
            .iter_mut()
            .find(|b| b.get("role").and_then(Value::as_str) == Some(INVOKER))
        {
            Some(binding) => match binding.get_mut("members").and_then(Value::as_array_mut) {
                Some(members) => members.push(ALL_USERS.into()),
                None => binding["members"] = json!([ALL_USERS]),
            },
            None => list.push(json!({"role": INVOKER, "members": [ALL_USERS]})),
        }
        self.client.json(
            "POST",
            &format!("{}:setIamPolicy", self.url(&resource)),
            Some(&json!({"policy": policy})),
            &format!("make `{resource}` public"),
        )?;
        Ok(true)
    }

    /// Polls a long-running operation until `done`; returns its `response`.
    fn wait(&self, mut operation: Value, action: &str) -> Result<Value, GcpError> {
        let started = Instant::now();
        loop {
            if operation.get("done").and_then(Value::as_bool) == Some(true) {
                if let Some(error) = operation.get("error") {
                    return Err(GcpError::Status {
                        action: action.to_string(),
                        status: 200,
                        message: format!(
                            "the operation failed: {}",
                            error
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("(no message)")
                        ),
                    });
                }
                return Ok(operation.get("response").cloned().unwrap_or(Value::Null));
            }
            let Some(name) = operation.get("name").and_then(Value::as_str) else {
                return Err(GcpError::Decode {
                    action: action.to_string(),
                    message: "an unfinished operation without a `name`".into(),
                });
            };
            if started.elapsed() > self.operation_timeout {
                return Err(GcpError::Unreachable {
                    url: self.url(name),
                    message: format!(
                        "{action}: not done after {} s",
                        self.operation_timeout.as_secs()
                    ),
                });
            }
            std::thread::sleep(self.poll_interval);
            operation = self.client.json("GET", &self.url(name), None, action)?;
        }
    }
}

const INVOKER: &str = "roles/run.invoker";
const ALL_USERS: &str = "allUsers";
