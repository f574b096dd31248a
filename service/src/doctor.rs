//! `kit-service doctor`: the deploy-kit checks, judged on what the container sees.
//!
//! Inside the container the environment is the whole truth: the signing key
//! itself (so KEY002 can measure it), the limits, auth, CORS and rate limit.
//! What only the deploy config knows (instance count, public exposure,
//! rendered manifests, waivers) is inferred from the platform's own variables
//! or left at its cautious default; the report says so through skips.

use std::net::SocketAddr;

use kit_checks::facts::{
    KeyFacts, KeyMaterial, KeySource, LimitFacts, PreviousKey, SecurityFacts, TargetFacts,
};
use kit_checks::platform::Platform;
use kit_checks::render::{Format, Rendering};
use kit_checks::{Date, Facts, Options, Probes, Severity};

use crate::config::{Config, Env, decode_key};

/// The platform, from the variables each one injects into its containers.
pub fn detect_platform(env: &dyn Env) -> Platform {
    let set = |name: &str| env.var(name).is_some_and(|v| !v.is_empty());
    if set("AWS_LAMBDA_FUNCTION_NAME") {
        Platform::AwsLambdaFunctionUrl
    } else if set("FUNCTION_TARGET") {
        Platform::CloudFunctions
    } else if set("K_SERVICE") {
        Platform::CloudRun
    } else if set("FUNCTIONS_CUSTOMHANDLER_PORT") {
        Platform::AzureFunctions
    } else if set("FLY_APP_NAME") {
        Platform::Fly
    } else if set("RAILWAY_ENVIRONMENT") {
        Platform::Railway
    } else if set("KUBERNETES_SERVICE_HOST") {
        Platform::Kubernetes
    } else {
        Platform::Compose
    }
}

/// Builds the facts for this process from its parsed config and environment.
pub fn facts(config: &Config, env: &dyn Env, today: Date) -> Facts {
    let platform = detect_platform(env);
    // A container cannot see its replica count; platforms that autoscale are
    // assumed to run several instances, which is what KEY001 must guard.
    let instances = match platform {
        Platform::Compose | Platform::Fly | Platform::Railway => 1,
        _ => 2,
    };
    let literal = env.var("VGI_SIGNING_KEY").filter(|v| !v.is_empty());
    let file = env.var("VGI_SIGNING_KEY_FILE").filter(|v| !v.is_empty());
    let (source, key_text) = match (literal, file) {
        (Some(text), _) => (
            KeySource::Env {
                variable: "VGI_SIGNING_KEY".into(),
            },
            Some(text),
        ),
        (None, Some(path)) => {
            let text = env
                .read_file(&path)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .map(|text| text.trim_end_matches(['\n', '\r']).to_string());
            (KeySource::File { path }, text)
        }
        (None, None) => (KeySource::Ephemeral, None),
    };
    let material = key_text
        .and_then(|text| decode_key(&text).ok())
        .map(|bytes| KeyMaterial::inspect(&bytes));
    let debug = env
        .var("RUST_LOG")
        .is_some_and(|filter| filter.contains("debug") || filter.contains("trace"));
    Facts {
        origin: "environment".into(),
        today,
        target: TargetFacts {
            name: config
                .server_id
                .clone()
                .unwrap_or_else(|| "kit-service".into()),
            platform,
            instances,
            workers: 1,
            public: false,
            production: false,
            bind: Some(config.listen.to_string()),
            termination_grace_seconds: None,
        },
        limits: LimitFacts {
            max_request_bytes: config.max_request_bytes,
            max_response_bytes: config.max_response_bytes,
            externalize_threshold_bytes: None,
            upload_urls: config.max_upload_bytes.is_some(),
            request_timeout_seconds: config.request_timeout.as_secs(),
            stream_timeout_seconds: None,
            shutdown_grace_seconds: config.shutdown_grace_seconds,
        },
        signing_key: KeyFacts {
            source,
            material,
            fingerprint: (!config.keys.is_ephemeral()).then(|| config.keys.primary().fingerprint()),
            previous: config
                .keys
                .previous()
                .iter()
                .map(|_| PreviousKey { retired_on: None })
                .collect(),
            token_ttl_seconds: config.keys.ttl_seconds(),
            token_mode: Some(config.keys.mode().as_str().to_string()),
            // Filled by `run`, which has the protocols.
            confidential_state: None,
        },
        storage: None,
        security: SecurityFacts {
            require_auth: config.require_auth,
            api_keys_configured: !config.api_keys.is_empty(),
            api_keys: config.api_keys.facts(),
            cors_origins: config.cors_origins.clone(),
            rate_limit: config
                .rate_limit
                .as_ref()
                .map(|limit| format!("{}/{}", limit.requests, limit.per.as_secs())),
            reflection: config.reflection,
            debug,
            tracebacks: false,
        },
        manifests: Vec::new(),
        replicas: Vec::new(),
        endpoint: None,
        waivers: Vec::new(),
        artifact: None,
        // This process parsed its environment to get here.
        service_config_problems: None,
    }
}

/// `protocol/method` of every stream in `protocols` that declared
/// confidential state ([`crate::rpc::Protocol::with_confidential_state`]).
pub fn confidential_state(protocols: &[crate::rpc::Protocol]) -> Vec<String> {
    protocols
        .iter()
        .flat_map(|protocol| {
            protocol
                .methods()
                .filter(|method| method.confidential_state())
                .map(|method| format!("{}/{}", protocol.name(), method.name()))
        })
        .collect()
}

/// Runs the offline checks on this environment for a service hosting
/// `protocols`: the text to print and the exit code (0 clean, 1 findings,
/// 2 bad environment, 3 could not run).
pub fn run(
    env: &dyn Env,
    listen: SocketAddr,
    protocols: &[crate::rpc::Protocol],
    format: Format,
    fail_on: Severity,
) -> (String, u8) {
    let config = match Config::from_env(env, listen) {
        Ok(config) => config,
        Err(error) => {
            return (
                format!(
                    "error: {error}\nhint: run `kit-service env-docs` for every variable and its format\n"
                ),
                2,
            );
        }
    };
    let mut facts = facts(&config, env, Date::today_utc());
    facts.signing_key.confidential_state = Some(confidential_state(protocols));
    let report = kit_checks::run(&facts, &Probes::default(), &Options::default());
    let rendering = Rendering {
        fail_on,
        tool: "kit-service",
        version: env!("CARGO_PKG_VERSION"),
    };
    (
        format.render(&report, &rendering),
        report.status(fail_on).exit_code(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn listen() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    fn outcome(pairs: &[(&str, &str)], id: &str) -> kit_checks::Outcome {
        let env = env(pairs);
        let config = Config::from_env(&env, listen()).unwrap();
        let facts = facts(&config, &env, Date::parse("2026-01-10").unwrap());
        let report = kit_checks::run(&facts, &Probes::default(), &Options::default());
        report.finding(id).unwrap().outcome.clone()
    }

    fn failed(pairs: &[(&str, &str)], id: &str) -> bool {
        matches!(outcome(pairs, id), kit_checks::Outcome::Fail { .. })
    }

    #[test]
    fn an_expired_api_key_fails_sec006() {
        assert!(failed(
            &[("KIT_API_KEYS", "ci=k1;expires=2020-01-01")],
            "SEC006"
        ));
        assert!(!failed(
            &[("KIT_API_KEYS", "ci=k1;expires=2999-01-01")],
            "SEC006"
        ));
        assert!(!failed(&[("KIT_API_KEYS", "ci=k1")], "SEC006"));
    }

    #[test]
    fn no_key_on_an_autoscaling_platform_fails_key001() {
        assert!(failed(&[("K_SERVICE", "svc")], "KEY001"));
        assert!(!failed(&[], "KEY001"), "compose: one instance");
        let key = "hex:".to_string() + &"3c9a".repeat(16);
        assert!(!failed(
            &[("K_SERVICE", "svc"), ("VGI_SIGNING_KEY", &key)],
            "KEY001"
        ));
    }

    #[test]
    fn the_key_in_the_environment_is_measured() {
        let weak = "x".repeat(40);
        assert!(failed(&[("VGI_SIGNING_KEY", &weak)], "KEY002"));
        let strong =
            "hex:".to_string() + "9f2c4e7a1b3d5f60a8c2e4f6b1d3a5c79f2c4e7a1b3d5f60a8c2e4f6b1d3a5c7";
        assert_eq!(
            outcome(&[("VGI_SIGNING_KEY", &strong)], "KEY002"),
            kit_checks::Outcome::Pass
        );
    }

    #[test]
    fn platform_limits_apply_inside_the_container() {
        assert!(failed(&[("AWS_LAMBDA_FUNCTION_NAME", "f")], "LIM001"));
        assert!(!failed(
            &[
                ("AWS_LAMBDA_FUNCTION_NAME", "f"),
                ("KIT_MAX_REQUEST_BYTES", "5000000")
            ],
            "LIM001"
        ));
        assert!(failed(
            &[("K_SERVICE", "svc"), ("KIT_SHUTDOWN_GRACE", "30")],
            "OPS002"
        ));
    }

    #[test]
    fn key007_warns_until_confidential_state_is_sealed() {
        let protocols = [crate::demo::protocol().with_confidential_state("count")];
        let (text, code) = run(
            &env(&[]),
            listen(),
            &protocols,
            Format::Text,
            Severity::Warn,
        );
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("KEY007") && text.contains("`kit.Demo.v1/count`"),
            "{text}"
        );
        let sealed = env(&[("KIT_TOKEN_MODE", "sealed")]);
        let (text, _) = run(&sealed, listen(), &protocols, Format::Text, Severity::Warn);
        assert!(text.contains("pass    KEY007"), "{text}");
        let (text, _) = run(
            &env(&[]),
            listen(),
            &[crate::demo::protocol()],
            Format::Text,
            Severity::Warn,
        );
        assert!(text.contains("pass    KEY007"), "{text}");
    }

    #[test]
    fn exit_codes() {
        let (text, code) = run(&env(&[]), listen(), &[], Format::Text, Severity::Error);
        assert_eq!(code, 0, "{text}");
        assert!(text.lines().last().unwrap().starts_with("summary: "));
        let (_, code) = run(
            &env(&[("K_SERVICE", "svc")]),
            listen(),
            &[],
            Format::Json,
            Severity::Error,
        );
        assert_eq!(code, 1);
        let (text, code) = run(
            &env(&[("KIT_REFLECTION", "maybe")]),
            listen(),
            &[],
            Format::Text,
            Severity::Error,
        );
        assert_eq!(code, 2, "{text}");
    }
}
