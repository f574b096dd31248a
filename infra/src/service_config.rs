//! The facts of CFG001: kit-service's own configuration parser, run on the
//! environment deploy-kit renders for a target.
//!
//! The service parses its environment once at start and exits 64 on any bad
//! variable, so a setting it refuses (`rate_limit: fast`) would otherwise pass
//! `plan` and stop every replica of the deploy. Running the same parser
//! (`kit_service::config::Config::from_env`) here keeps one definition of
//! "valid". Secrets are not known at plan time: each secret the service gets
//! stands in as a well-formed placeholder of its kind, so only the rendered
//! settings are judged.

use std::collections::HashMap;

use crate::config::DeployConfig;
use crate::render::{Delivery, SecretSettings, service_environment};

/// The address the parser is given; the rendered `PORT`, if any, overrides it.
const LISTEN: &str = "0.0.0.0:8080";

/// What the service's parser refuses in the environment of `target_name`,
/// one line per problem; empty when it would start.
///
/// Bucket names are left to STO008, which judges them with the same rules,
/// so one mistake is reported once.
pub fn problems(config: &DeployConfig, target_name: &str) -> Vec<String> {
    let Some((env, secrets)) = service_environment(config, target_name) else {
        return Vec::new();
    };
    let mut rendered = Rendered {
        vars: env.into_iter().map(|v| (v.name, v.value)).collect(),
        files: HashMap::new(),
    };
    for secret in &secrets {
        rendered.stand_in(secret);
    }
    let listen = LISTEN.parse().expect("a socket address");
    match kit_service::config::Config::from_env(&rendered, listen) {
        Ok(_) => Vec::new(),
        Err(error) => error
            .0
            .into_iter()
            .filter(|problem| !problem.starts_with("`KIT_STORAGE_BUCKET`"))
            .collect(),
    }
}

/// The rendered variables plus the files mounted secrets would be.
struct Rendered {
    vars: HashMap<String, String>,
    files: HashMap<String, Vec<u8>>,
}

impl Rendered {
    fn stand_in(&mut self, secret: &SecretSettings) {
        let value = match secret.id.as_str() {
            // 32 bytes, as `VGI_SIGNING_KEY` requires (KEY002 judges the real one).
            "signing-key" => format!("hex:{}", "5a".repeat(32)),
            "api-keys" => "deploy-kit-plan=placeholder-for-the-api-keys-secret".to_string(),
            _ => "{}".to_string(),
        };
        match secret.delivery {
            Delivery::File => {
                self.vars
                    .insert(secret.variable.clone(), secret.file_path.clone());
                self.files
                    .insert(secret.file_path.clone(), value.into_bytes());
            }
            Delivery::Env => {
                self.vars.insert(secret.variable.clone(), value);
            }
        }
    }
}

impl kit_service::config::Env for Rendered {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn read_file(&self, path: &str) -> std::io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("`{path}` is not a secret deploy-kit mounts"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> DeployConfig {
        let text = format!(
            "version: 1
service: {{name: vgi}}
targets:
  prod:
    platform: kubernetes
    instances: 2
signing_key: {{source: secret, secret: \"k8s:vgi/signing-key\"}}
auth: {{required: true, api_keys: \"k8s:vgi/api-keys\"}}
{extra}"
        );
        DeployConfig::parse(&text, std::path::Path::new("deploy-kit.yaml")).unwrap()
    }

    #[test]
    fn a_valid_config_with_secrets_is_accepted() {
        let problems = problems(&config("rate_limit: 100/60\n"), "prod");
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn settings_the_service_would_refuse_are_named() {
        let problems = problems(&config("rate_limit: fast\n"), "prod");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("`KIT_RATE_LIMIT`"), "{problems:?}");
    }
}
