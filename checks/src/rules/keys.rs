//! KEY001-KEY007: the stream-token signing key.

use super::{Context, Verdict, errored};
use crate::facts::{Facts, KeySource, ManifestKind};
use crate::probe::ReplicaKey;

const MIN_KEY_BYTES: usize = 32;
const MIN_DISTINCT_BYTES: usize = 8;
const MIN_ENTROPY_BITS_PER_BYTE: f64 = 3.0;

pub(super) fn shared_key(facts: &Facts) -> Verdict {
    if facts.signing_key.source != KeySource::Ephemeral || facts.processes() <= 1 {
        return Verdict::Pass;
    }
    Verdict::Fail(format!(
        "no signing key is configured, so each of up to {} processes on `{}` ({} instances x {} workers) signs with its own random key",
        facts.processes(),
        facts.target.name,
        facts.target.instances,
        facts.target.workers
    ))
}

pub(super) fn weak_key(facts: &Facts) -> Verdict {
    let key = &facts.signing_key;
    let Some(material) = &key.material else {
        return match &key.source {
            KeySource::Ephemeral => Verdict::Pass,
            source => Verdict::Skip(format!(
                "the key comes from {} and is not visible here; run `kit-service doctor` inside the container to measure it",
                describe(source)
            )),
        };
    };
    let mut problems = Vec::new();
    if material.length < MIN_KEY_BYTES {
        problems.push(format!(
            "is {} bytes (at least {MIN_KEY_BYTES} needed)",
            material.length
        ));
    }
    if material.placeholder {
        problems.push("is a known placeholder".to_string());
    } else if material.distinct_bytes < MIN_DISTINCT_BYTES
        || material.entropy_bits_per_byte < MIN_ENTROPY_BITS_PER_BYTE
    {
        problems.push(format!(
            "has low entropy ({:.1} bits per byte over {} distinct bytes)",
            material.entropy_bits_per_byte, material.distinct_bytes
        ));
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("the signing key {}", problems.join(" and ")))
    }
}

pub(super) fn literal_key(facts: &Facts) -> Verdict {
    let mut places = Vec::new();
    if facts.signing_key.source == KeySource::Literal {
        places.push(format!("`signing_key.value` in {}", facts.origin));
    }
    for manifest in &facts.manifests {
        for line in literal_key_lines(&manifest.text, manifest.kind()) {
            places.push(format!("{}:{line}", manifest.path));
        }
    }
    if places.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "the signing key is written as a literal in {}",
            places.join(", ")
        ))
    }
}

/// 1-based lines of `text` that set a signing key to a literal value.
fn literal_key_lines(text: &str, kind: ManifestKind) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(at) = line.find("VGI_SIGNING_KEY") else {
            continue;
        };
        let rest = &line[at + "VGI_SIGNING_KEY".len()..];
        // `VGI_SIGNING_KEY_FILE` names a path, not a key.
        if rest.starts_with("_FILE") {
            continue;
        }
        let rest = rest.strip_prefix("_PREVIOUS").unwrap_or(rest);
        let rest = rest.trim_start_matches(['"', '\'']);
        // `KEY=value` (Dockerfile ENV, compose list, .env) or `KEY: value` (compose map).
        if let Some(value) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) {
            if is_literal(value) {
                found.push(index + 1);
            }
            continue;
        }
        // Dockerfile `ENV KEY value`.
        if kind == ManifestKind::Dockerfile && line.trim_start().starts_with("ENV ") {
            if is_literal(rest) {
                found.push(index + 1);
            }
            continue;
        }
        // Kubernetes `- name: VGI_SIGNING_KEY` followed by `value:` (not `valueFrom:`).
        if line
            .trim_start()
            .trim_start_matches("- ")
            .starts_with("name:")
            && let Some(next) = lines[index + 1..].iter().find(|l| !l.trim().is_empty())
            && let Some(value) = next.trim_start().strip_prefix("value:")
            && is_literal(value)
        {
            found.push(index + 1);
        }
    }
    found
}

/// A value that is neither empty nor a substitution (`${VAR}`, `$VAR`).
fn is_literal(value: &str) -> bool {
    let value = value.trim().trim_matches(['"', '\'']).trim();
    !value.is_empty() && !value.starts_with('$') && !value.starts_with('{')
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::Ephemeral => "nowhere (per-process random key)".into(),
        KeySource::Env { variable } => format!("`{variable}`"),
        KeySource::File { path } => format!("the file `{path}`"),
        KeySource::SecretStore { reference } => format!("the secret `{reference}`"),
        KeySource::Literal => "the config file".into(),
    }
}

pub(super) fn replica_mismatch(facts: &Facts, context: &Context<'_>) -> Verdict {
    if let Some(skip) = context.offline() {
        return Verdict::Done(skip);
    }
    let Some(probe) = context.probes.replicas else {
        return Verdict::Skip("no replica probe in this run".into());
    };
    if facts.replicas.len() < 2 {
        return Verdict::Skip(format!(
            "needs at least two replicas, {} listed (`replicas:` in deploy-kit.yaml or `--replica URL`)",
            facts.replicas.len()
        ));
    }
    let mut keys = Vec::new();
    for replica in &facts.replicas {
        let key = probe
            .healthz(replica)
            .and_then(|body| ReplicaKey::from_healthz(&body));
        match key {
            Ok(key) => keys.push((replica.as_str(), key)),
            Err(reason) => return errored(format!("could not read `{replica}/healthz`: {reason}")),
        }
    }
    let ephemeral: Vec<&str> = keys
        .iter()
        .filter(|(_, key)| key.ephemeral)
        .map(|(replica, _)| *replica)
        .collect();
    let first = &keys[0].1.fingerprint;
    let differ = keys.iter().any(|(_, key)| key.fingerprint != *first);
    let expected = facts.signing_key.fingerprint.as_deref();
    let unexpected = expected.is_some_and(|e| keys.iter().any(|(_, key)| key.fingerprint != e));
    if !differ && ephemeral.is_empty() && !unexpected {
        return Verdict::Pass;
    }
    let listing = keys
        .iter()
        .map(|(replica, key)| format!("{replica} -> {}", key.fingerprint))
        .collect::<Vec<_>>()
        .join(", ");
    let mut message = if differ {
        format!("replicas report different key fingerprints: {listing}")
    } else if !ephemeral.is_empty() {
        format!(
            "replicas use per-process random keys ({}): {listing}",
            ephemeral.join(", ")
        )
    } else {
        format!(
            "replicas report fingerprint {first} but the configured key's is {}",
            expected.unwrap_or_default()
        )
    };
    if differ && !ephemeral.is_empty() {
        message.push_str(&format!(
            "; random per-process keys on {}",
            ephemeral.join(", ")
        ));
    }
    Verdict::Fail(message)
}

pub(super) fn unfinished_rotation(facts: &Facts) -> Verdict {
    let key = &facts.signing_key;
    if key.previous.is_empty() {
        return Verdict::Pass;
    }
    if key.token_ttl_seconds == 0 {
        return Verdict::Fail(format!(
            "{} previous key(s) kept while tokens never expire (`token_ttl_seconds: 0`), so no rotation can finish",
            key.previous.len()
        ));
    }
    // A day of slack for clocks and the time the rollout itself takes.
    let needed_days = key.token_ttl_seconds.div_ceil(86_400) as i64 + 1;
    let mut stale = Vec::new();
    let mut undated = 0;
    for previous in &key.previous {
        match previous.retired_on {
            Some(retired) if retired.days_until(facts.today) > needed_days => {
                stale.push(format!("retired {retired}"))
            }
            Some(_) => {}
            None => undated += 1,
        }
    }
    if !stale.is_empty() {
        return Verdict::Fail(format!(
            "previous key(s) {} are still kept; tokens live {} s, so they were needed for {needed_days} day(s) at most",
            stale.join(", "),
            key.token_ttl_seconds
        ));
    }
    if undated > 0 {
        return Verdict::Skip(format!(
            "{undated} previous key(s) carry no retirement date; record `retired: YYYY-MM-DD` to judge the rotation"
        ));
    }
    Verdict::Pass
}

pub(super) fn tokens_never_expire(facts: &Facts) -> Verdict {
    if facts.signing_key.token_ttl_seconds != 0 || facts.processes() <= 1 {
        return Verdict::Pass;
    }
    Verdict::Fail(format!(
        "`token_ttl_seconds: 0` on `{}`, where up to {} processes ({} instances x {} workers) accept the same tokens forever",
        facts.target.name,
        facts.processes(),
        facts.target.instances,
        facts.target.workers
    ))
}

pub(super) fn readable_secret_state(facts: &Facts) -> Verdict {
    let key = &facts.signing_key;
    let Some(methods) = &key.confidential_state else {
        return Verdict::Skip(
            "which streams keep secrets in their state is known where the protocols are: run `kit-service doctor` in the service's environment".into(),
        );
    };
    if methods.is_empty() || key.token_mode.as_deref() == Some("sealed") {
        return Verdict::Pass;
    }
    Verdict::Fail(format!(
        "`{}` declare(s) confidential stream state, and tokens are {} (readable by the caller)",
        methods.join("`, `"),
        key.token_mode.as_deref().unwrap_or("signed")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn key007_readable_secret_state() {
        let mut f = facts();
        check("KEY007", &f, "skip");
        f.signing_key.confidential_state = Some(Vec::new());
        f.signing_key.token_mode = Some("signed".into());
        check("KEY007", &f, "pass");
        f.signing_key.confidential_state = Some(vec!["acme.Vault.v1/scan".into()]);
        let message = check("KEY007", &f, "fail");
        assert!(
            message.contains("`acme.Vault.v1/scan`") && message.contains("signed"),
            "{message}"
        );
        f.signing_key.token_mode = Some("sealed".into());
        check("KEY007", &f, "pass");
    }

    use std::collections::HashMap;

    use super::*;
    use crate::Mode;
    use crate::facts::{KeyMaterial, Manifest, PreviousKey};
    use crate::probe::{Probes, ReplicaProbe};
    use crate::rules::test_support::{check, check_with, facts, today};

    #[test]
    fn key001_shared_key() {
        let mut f = facts();
        check("KEY001", &f, "pass");
        f.target.workers = 2;
        let message = check("KEY001", &f, "fail");
        assert!(message.contains("up to 2 processes"), "{message}");
        f.signing_key.source = KeySource::SecretStore {
            reference: "gcp:vgi-signing-key".into(),
        };
        check("KEY001", &f, "pass");
    }

    #[test]
    fn key002_weak_key() {
        let mut f = facts();
        f.signing_key.source = KeySource::Env {
            variable: "VGI_SIGNING_KEY".into(),
        };
        check("KEY002", &f, "skip");
        f.signing_key.material = Some(KeyMaterial::inspect(
            b"3f9a1c7e5b2d8f0a4c6e1b3d5f7a9c0e2b4d6f8a1c3e5b7d",
        ));
        check("KEY002", &f, "pass");
        for (key, expect) in [
            (b"short-but-random-9f2c".as_slice(), "bytes"),
            (
                b"changeme-changeme-changeme-changeme".as_slice(),
                "placeholder",
            ),
            (
                b"abababababababababababababababababab".as_slice(),
                "entropy",
            ),
        ] {
            f.signing_key.material = Some(KeyMaterial::inspect(key));
            let message = check("KEY002", &f, "fail");
            assert!(message.contains(expect), "{message}");
        }
    }

    #[test]
    fn key003_literal_key() {
        let mut f = facts();
        f.manifests.push(Manifest {
            path: "k8s/deployment.yaml".into(),
            text: "kind: Deployment\nenv:\n  - name: VGI_SIGNING_KEY\n    valueFrom:\n      secretKeyRef: {name: vgi, key: key}\n".into(),
        });
        f.manifests.push(Manifest {
            path: "compose.yaml".into(),
            text: "environment:\n  VGI_SIGNING_KEY: ${VGI_SIGNING_KEY}\n  VGI_SIGNING_KEY_FILE: /run/secrets/key\n".into(),
        });
        check("KEY003", &f, "pass");
        for (path, text, line) in [
            (
                "k8s/deploy.yaml",
                "kind: Deployment\nenv:\n  - name: VGI_SIGNING_KEY\n    value: \"abc\"\n",
                3,
            ),
            ("Dockerfile", "FROM scratch\nENV VGI_SIGNING_KEY=0123\n", 2),
            ("Dockerfile", "FROM scratch\nENV VGI_SIGNING_KEY 0123\n", 2),
            (
                "compose.yaml",
                "environment:\n  - VGI_SIGNING_KEY_PREVIOUS=old\n",
                2,
            ),
        ] {
            let mut f = facts();
            f.manifests.push(Manifest {
                path: path.into(),
                text: text.into(),
            });
            let message = check("KEY003", &f, "fail");
            assert!(message.contains(&format!("{path}:{line}")), "{message}");
        }
        let mut f = facts();
        f.signing_key.source = KeySource::Literal;
        assert!(check("KEY003", &f, "fail").contains("signing_key.value"));
    }

    struct Replicas(HashMap<&'static str, Result<String, String>>);

    impl ReplicaProbe for Replicas {
        fn healthz(&self, base_url: &str) -> Result<String, String> {
            self.0[base_url].clone()
        }
    }

    fn healthz(fingerprint: &str, ephemeral: bool) -> Result<String, String> {
        Ok(format!(
            r#"{{"status":"ok","signing_key":{{"fingerprint":"{fingerprint}","ephemeral":{ephemeral}}}}}"#
        ))
    }

    fn online(replicas: &Replicas) -> Probes<'_> {
        Probes {
            replicas: Some(replicas),
            ..Probes::default()
        }
    }

    #[test]
    fn key004_replica_mismatch() {
        let mut f = facts();
        f.replicas = vec!["http://a".into(), "http://b".into()];
        check("KEY004", &f, "skip");
        let same = Replicas(HashMap::from([
            ("http://a", healthz("aaaa", false)),
            ("http://b", healthz("aaaa", false)),
        ]));
        check_with("KEY004", &f, Mode::Online, online(&same), "pass");
        let different = Replicas(HashMap::from([
            ("http://a", healthz("aaaa", false)),
            ("http://b", healthz("bbbb", false)),
        ]));
        let message = check_with("KEY004", &f, Mode::Online, online(&different), "fail");
        assert!(message.contains("http://b -> bbbb"), "{message}");
        let ephemeral = Replicas(HashMap::from([
            ("http://a", healthz("aaaa", true)),
            ("http://b", healthz("aaaa", true)),
        ]));
        let message = check_with("KEY004", &f, Mode::Online, online(&ephemeral), "fail");
        assert!(message.contains("per-process random keys"), "{message}");
        let down = Replicas(HashMap::from([
            ("http://a", healthz("aaaa", false)),
            ("http://b", Err("connection refused".into())),
        ]));
        check_with("KEY004", &f, Mode::Online, online(&down), "errored");
        f.replicas.truncate(1);
        check_with("KEY004", &f, Mode::Online, online(&same), "skip");
    }

    #[test]
    fn key005_unfinished_rotation() {
        let mut f = facts();
        check("KEY005", &f, "pass");
        f.signing_key.previous.push(PreviousKey {
            retired_on: Some(today().add_days(-1)),
        });
        check("KEY005", &f, "pass");
        f.signing_key.previous[0].retired_on = Some(today().add_days(-30));
        check("KEY005", &f, "fail");
        f.signing_key.previous[0].retired_on = None;
        check("KEY005", &f, "skip");
        f.signing_key.token_ttl_seconds = 0;
        check("KEY005", &f, "fail");
    }

    #[test]
    fn key006_tokens_never_expire() {
        let mut f = facts();
        f.signing_key.token_ttl_seconds = 0;
        check("KEY006", &f, "pass");
        f.target.instances = 3;
        let message = check("KEY006", &f, "fail");
        assert!(message.contains("up to 3 processes"), "{message}");
        f.signing_key.token_ttl_seconds = 3600;
        check("KEY006", &f, "pass");
    }
}
