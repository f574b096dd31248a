//! Registry logins that come from a cloud account instead of a docker
//! config file: ECR (`GetAuthorizationToken` with the AWS credentials, as
//! `aws ecr get-login-password` does) and Artifact Registry (a Google OAuth
//! access token as the password of `oauth2accesstoken`, as `gcloud auth
//! configure-docker` arranges). Which one a registry gets is
//! `build.registry_auth` ([`RegistryAuth`]): by default, by its host.
//!
//! The SDK calls sit behind the cargo features `aws` and `gcp`; a build
//! without the feature names it instead of pushing anonymously.

use super::credentials::{self, Credential, CredentialError};
use crate::config::RegistryAuth;

/// The user name Artifact Registry (and GCR) take with an access token.
pub const ARTIFACT_REGISTRY_USER: &str = "oauth2accesstoken";

/// A login from a cloud account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudLogin {
    /// ECR: the registry's account and region when its host names them (the
    /// token is the caller's, good for every registry it may use: ECR no
    /// longer scopes it to an account).
    Ecr {
        account: Option<String>,
        region: Option<String>,
    },
    ArtifactRegistry,
}

/// `(account, region)` of an ECR registry host
/// (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]`).
///
/// ```
/// use deploy_kit::build::cloud_login::ecr_host;
/// assert_eq!(
///     ecr_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
///     Some(("123456789012".to_string(), "eu-west-1".to_string()))
/// );
/// assert_eq!(ecr_host("ghcr.io"), None);
/// ```
pub fn ecr_host(registry: &str) -> Option<(String, String)> {
    let host = registry.split(':').next().unwrap_or(registry);
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let mut parts = rest.split('.');
    let (account, dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let fips = parts.next();
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (account_ok
        && dkr == "dkr"
        && (ecr == "ecr" || ecr == "ecr-fips")
        && !region.is_empty()
        && fips.is_none())
    .then(|| (account.to_string(), region.to_string()))
}

/// Whether `registry` is an Artifact Registry docker host (`<location>-docker.pkg.dev`).
pub fn is_artifact_registry(registry: &str) -> bool {
    registry
        .split(':')
        .next()
        .is_some_and(|host| host.ends_with("-docker.pkg.dev"))
}

/// The cloud login `auth` gives `registry`, if any.
pub fn login_for(registry: &str, auth: RegistryAuth) -> Option<CloudLogin> {
    let ecr = || {
        let (account, region) = ecr_host(registry).unzip();
        CloudLogin::Ecr { account, region }
    };
    match auth {
        RegistryAuth::DockerConfig => None,
        RegistryAuth::Ecr => Some(ecr()),
        RegistryAuth::ArtifactRegistry => Some(CloudLogin::ArtifactRegistry),
        RegistryAuth::Auto if ecr_host(registry).is_some() => Some(ecr()),
        RegistryAuth::Auto if is_artifact_registry(registry) => Some(CloudLogin::ArtifactRegistry),
        RegistryAuth::Auto => None,
    }
}

/// The credential for `registry`: the cloud login `auth` names (an
/// explicit one always; one chosen by host only when the docker config
/// file has nothing for the registry), else the docker config file.
/// `region` is the target's, for an ECR login whose host names none.
pub fn lookup(
    registry: &str,
    auth: RegistryAuth,
    region: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, CredentialError> {
    let Some(login) = login_for(registry, auth) else {
        return credentials::lookup(registry, env);
    };
    if auth == RegistryAuth::Auto
        && let Some(found) = credentials::lookup(registry, env)?
    {
        return Ok(Some(found));
    }
    credential(registry, &login, region, env).map(Some)
}

/// Logs in with `login`.
pub fn credential(
    registry: &str,
    login: &CloudLogin,
    region: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credential, CredentialError> {
    match login {
        CloudLogin::Ecr {
            region: host_region,
            ..
        } => {
            let region = host_region
                .clone()
                .or_else(|| region.map(str::to_string))
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .filter(|region| !region.is_empty())
                .ok_or_else(|| CredentialError::NoRegion {
                    registry: registry.to_string(),
                })?;
            ecr(registry, &region)
        }
        CloudLogin::ArtifactRegistry => artifact_registry(registry, env),
    }
}

/// ECR's `authorizationToken` is base64 `AWS:<password>`.
pub fn decode_ecr_token(registry: &str, token: &str) -> Result<Credential, CredentialError> {
    use base64::Engine as _;
    let bad = |message: &str| CredentialError::Ecr {
        registry: registry.to_string(),
        message: message.to_string(),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| bad("the authorization token is not base64"))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| bad("the authorization token is not UTF-8"))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad("the authorization token is not `user:password`"))?;
    Ok(Credential {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(feature = "aws")]
fn ecr(registry: &str, region: &str) -> Result<Credential, CredentialError> {
    use crate::engine::aws::clients::{AwsClients, describe};
    let failed = |message: String| CredentialError::Ecr {
        registry: registry.to_string(),
        message,
    };
    let clients = AwsClients::new(region, None).map_err(|error| failed(error.message))?;
    let answer = clients
        .runtime
        .block_on(clients.ecr().get_authorization_token().send())
        .map_err(|error| failed(describe(&error)))?;
    let token = answer
        .authorization_data()
        .first()
        .and_then(|data| data.authorization_token())
        .ok_or_else(|| failed("the answer holds no authorization token".into()))?;
    decode_ecr_token(registry, token)
}

#[cfg(not(feature = "aws"))]
fn ecr(registry: &str, _region: &str) -> Result<Credential, CredentialError> {
    Err(CredentialError::NeedsFeature {
        registry: registry.to_string(),
        login: "ECR",
        feature: "aws",
    })
}

#[cfg(feature = "gcp")]
fn artifact_registry(
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credential, CredentialError> {
    let failed = |message: String| CredentialError::ArtifactRegistry {
        registry: registry.to_string(),
        message,
    };
    let credentials = crate::gcp::Credentials::discover(env)
        .map_err(|error| failed(error.to_string()))?
        .ok_or_else(|| {
            failed(
                "no Google credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default file, or the metadata server)"
                    .into(),
            )
        })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .user_agent(concat!("deploy-kit/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let token = credentials
        .access_token(&agent)
        .map_err(|error| failed(error.to_string()))?;
    Ok(Credential {
        username: ARTIFACT_REGISTRY_USER.to_string(),
        password: token,
    })
}

#[cfg(not(feature = "gcp"))]
fn artifact_registry(
    registry: &str,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<Credential, CredentialError> {
    Err(CredentialError::NeedsFeature {
        registry: registry.to_string(),
        login: "Artifact Registry",
        feature: "gcp",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_pick_the_login_unless_the_config_says_otherwise() {
        let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
        assert_eq!(
            login_for(ecr, RegistryAuth::Auto),
            Some(CloudLogin::Ecr {
                account: Some("123456789012".into()),
                region: Some("us-east-1".into())
            })
        );
        assert_eq!(login_for(ecr, RegistryAuth::DockerConfig), None);
        assert_eq!(
            login_for("europe-west1-docker.pkg.dev", RegistryAuth::Auto),
            Some(CloudLogin::ArtifactRegistry)
        );
        assert_eq!(login_for("127.0.0.1:5000", RegistryAuth::Auto), None);
        assert_eq!(
            login_for("127.0.0.1:5000", RegistryAuth::Ecr),
            Some(CloudLogin::Ecr {
                account: None,
                region: None
            })
        );
        assert_eq!(ecr_host("12345.dkr.ecr.us-east-1.amazonaws.com"), None);
        assert_eq!(ecr_host("123456789012.dkr.ecr.amazonaws.com"), None);
    }

    #[test]
    fn ecr_tokens_decode_to_user_and_password() {
        // What ECR (and moto) answer: base64 of `AWS:<password>`.
        let found = decode_ecr_token("r", "QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu").unwrap();
        assert_eq!(found.username, "AWS");
        assert_eq!(found.password, "123456789012-auth-token");
        let error = decode_ecr_token("r", "not base64!").unwrap_err();
        assert!(error.to_string().contains("not base64"), "{error}");
    }

    #[test]
    fn an_ecr_login_needs_a_region() {
        let error = credential(
            "127.0.0.1:5000",
            &CloudLogin::Ecr {
                account: None,
                region: None,
            },
            None,
            &|_| None,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("an ECR login to `127.0.0.1:5000` needs a region"),
            "{error}"
        );
    }
}
