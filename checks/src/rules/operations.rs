//! OPS001-OPS004: health probes, shutdown, an end-to-end probe across
//! replicas and the smoke test of a deployment.

use super::{Context, Verdict, errored};
use crate::facts::{Facts, ManifestKind};
use crate::probe::{SyntheticError, SyntheticProbe};

pub(super) fn probes(facts: &Facts) -> Verdict {
    let mut inspected = 0;
    let mut missing = Vec::new();
    for manifest in &facts.manifests {
        let needed: &[&str] = match manifest.kind() {
            ManifestKind::KubernetesWorkload => &["livenessProbe", "readinessProbe"],
            ManifestKind::Compose => &["healthcheck"],
            _ => continue,
        };
        inspected += 1;
        for probe in needed {
            if !manifest.text.contains(&format!("{probe}:")) {
                missing.push(format!("{} has no `{probe}`", manifest.path));
            }
        }
    }
    if inspected == 0 {
        Verdict::Skip("no rendered Kubernetes or compose manifests to inspect".into())
    } else if missing.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(missing.join("; "))
    }
}

/// `terminationGracePeriodSeconds: N` from a rendered Kubernetes manifest.
fn manifest_grace(facts: &Facts) -> Option<u64> {
    facts.manifests.iter().find_map(|manifest| {
        manifest.text.lines().find_map(|line| {
            line.trim()
                .strip_prefix("terminationGracePeriodSeconds:")
                .and_then(|v| v.trim().parse().ok())
        })
    })
}

pub(super) fn shutdown_grace(facts: &Facts) -> Verdict {
    let platform = facts.target.platform;
    let grace = facts
        .target
        .termination_grace_seconds
        .or_else(|| manifest_grace(facts))
        .or(platform.limits().termination_grace_seconds);
    let Some(grace) = grace else {
        return Verdict::Skip(format!(
            "`{}` documents no termination grace; set `termination_grace_seconds` on the target to judge",
            platform.name()
        ));
    };
    let shutdown = facts.limits.shutdown_grace_seconds;
    if shutdown > grace {
        Verdict::Fail(format!(
            "`shutdown_grace_seconds` is {shutdown} but `{}` kills the process {grace} s after SIGTERM",
            platform.name()
        ))
    } else {
        Verdict::Pass
    }
}

/// The run's synthetic probe, or the skip verdict that says why there is none.
fn synthetic_probe<'a>(context: &Context<'a>) -> Result<&'a dyn SyntheticProbe, Verdict> {
    if let Some(skip) = context.offline() {
        return Err(Verdict::Done(skip));
    }
    context.probes.synthetic.ok_or_else(|| {
        Verdict::Skip(
            context
                .probes
                .synthetic_unavailable
                .unwrap_or("no synthetic probe in this run")
                .to_string(),
        )
    })
}

/// Outcomes of a check's synthetic calls: a wrong answer fails it, an
/// unreachable replica means it could not run.
#[derive(Default)]
struct Calls {
    failures: Vec<String>,
    unreachable: Vec<String>,
}

impl Calls {
    fn record(&mut self, what: &str, result: Result<(), SyntheticError>) {
        match result {
            Ok(()) => {}
            Err(SyntheticError::Failed(reason)) => self.failures.push(format!("{what}: {reason}")),
            Err(SyntheticError::Unreachable(reason)) => {
                self.unreachable.push(format!("{what}: {reason}"))
            }
        }
    }

    fn verdict(self) -> Verdict {
        if !self.failures.is_empty() {
            Verdict::Fail(self.failures.join("; "))
        } else if !self.unreachable.is_empty() {
            errored(self.unreachable.join("; "))
        } else {
            Verdict::Pass
        }
    }
}

pub(super) fn synthetic(facts: &Facts, context: &Context<'_>) -> Verdict {
    let probe = match synthetic_probe(context) {
        Ok(probe) => probe,
        Err(verdict) => return verdict,
    };
    let [first, second, ..] = facts.replicas.as_slice() else {
        return Verdict::Skip("needs at least two replicas".into());
    };
    let mut calls = Calls::default();
    if facts.storage.is_some() {
        calls.record(
            &format!("call through external storage on {first}"),
            probe.call_through_storage(first),
        );
    }
    calls.record(
        &format!("stream from {first} continued on {second}"),
        probe.stream_across(first, second),
    );
    calls.verdict()
}

/// OPS004: calls against the deployment itself (its first replica, else the
/// URL the platform gave it): refused without a key when auth is required,
/// a real call with the key, a result through external storage when the
/// service has storage.
pub(super) fn smoke(facts: &Facts, context: &Context<'_>) -> Verdict {
    let probe = match synthetic_probe(context) {
        Ok(probe) => probe,
        Err(verdict) => return verdict,
    };
    let Some(url) = facts.replicas.first().or(facts.endpoint.as_ref()) else {
        return Verdict::Skip(
            "no deployed URL: nothing recorded one, and the target lists no `replicas`".into(),
        );
    };
    let mut calls = Calls::default();
    if facts.security.require_auth {
        let refusal = probe.refused_without_key(url);
        let refused = refusal.is_ok();
        calls.record(&format!("a call to {url} without a key"), refusal);
        if refused && !probe.has_key() {
            return Verdict::Skip(format!(
                "auth is required and no `DEPLOY_KIT_API_KEY` was given: checked only that {url} refuses a call without a key"
            ));
        }
    }
    calls.record(&format!("a call to {url}"), probe.call(url));
    if facts.storage.is_some() {
        calls.record(
            &format!("a result through external storage from {url}"),
            probe.call_through_storage(url),
        );
    }
    calls.verdict()
}

#[cfg(test)]
mod tests {
    use crate::Mode;
    use crate::facts::Manifest;
    use crate::platform::Platform;
    use crate::probe::{Probes, SyntheticError, SyntheticProbe};
    use crate::rules::limits::tests::storage;
    use crate::rules::test_support::{check, check_with, facts};

    fn manifest(path: &str, text: &str) -> Manifest {
        Manifest {
            path: path.into(),
            text: text.into(),
        }
    }

    #[test]
    fn ops001_probes() {
        let mut f = facts();
        check("OPS001", &f, "skip");
        f.manifests.push(manifest(
            "k8s/deployment.yaml",
            "kind: Deployment\nlivenessProbe:\n  httpGet: {path: /livez}\n",
        ));
        assert!(check("OPS001", &f, "fail").contains("no `readinessProbe`"));
        f.manifests[0]
            .text
            .push_str("readinessProbe:\n  httpGet: {path: /readyz}\n");
        check("OPS001", &f, "pass");
        f.manifests.push(manifest(
            "compose.yaml",
            "services:\n  app:\n    image: x\n",
        ));
        check("OPS001", &f, "fail");
    }

    #[test]
    fn ops002_shutdown_grace() {
        let mut f = facts();
        f.limits.shutdown_grace_seconds = 30;
        assert!(check("OPS002", &f, "fail").contains("10 s after SIGTERM"));
        f.limits.shutdown_grace_seconds = 8;
        check("OPS002", &f, "pass");
        f.target.platform = Platform::Kubernetes;
        f.limits.shutdown_grace_seconds = 45;
        check("OPS002", &f, "fail");
        f.manifests.push(manifest(
            "k8s/deployment.yaml",
            "kind: Deployment\n      terminationGracePeriodSeconds: 60\n",
        ));
        check("OPS002", &f, "pass");
        f.target.platform = Platform::AwsLambdaApiGateway;
        f.manifests.clear();
        check("OPS002", &f, "skip");
    }

    #[derive(Clone, Copy)]
    enum Answer {
        Ok,
        Wrong(&'static str),
        Down,
    }

    struct Synthetic {
        storage: Answer,
        stream: Answer,
    }

    /// What the smoke probe's deployment answers.
    struct Deployed {
        call: Answer,
        storage: Answer,
        without_key: Answer,
        key: bool,
    }

    impl SyntheticProbe for Deployed {
        fn call_through_storage(&self, _: &str) -> Result<(), SyntheticError> {
            answer(self.storage)
        }
        fn stream_across(&self, _: &str, _: &str) -> Result<(), SyntheticError> {
            panic!("OPS004 streams nowhere")
        }
        fn call(&self, _: &str) -> Result<(), SyntheticError> {
            answer(self.call)
        }
        fn refused_without_key(&self, _: &str) -> Result<(), SyntheticError> {
            answer(self.without_key)
        }
        fn has_key(&self) -> bool {
            self.key
        }
    }

    #[test]
    fn ops004_smoke() {
        let mut f = facts();
        let probes = |p: &'static Deployed| Probes {
            synthetic: Some(p),
            ..Probes::default()
        };
        static GOOD: Deployed = Deployed {
            call: Answer::Ok,
            storage: Answer::Ok,
            without_key: Answer::Ok,
            key: true,
        };
        static OPEN: Deployed = Deployed {
            call: Answer::Ok,
            storage: Answer::Ok,
            without_key: Answer::Wrong("answered 200"),
            key: true,
        };
        static LOSES: Deployed = Deployed {
            call: Answer::Ok,
            storage: Answer::Wrong("the result came back inline"),
            without_key: Answer::Ok,
            key: true,
        };
        static DOWN: Deployed = Deployed {
            call: Answer::Down,
            storage: Answer::Down,
            without_key: Answer::Down,
            key: true,
        };
        check("OPS004", &f, "skip");
        let skipped = check_with("OPS004", &f, Mode::Online, probes(&GOOD), "skip");
        assert!(skipped.contains("no deployed URL"), "{skipped}");
        f.endpoint = Some("https://fn.example".into());
        check_with("OPS004", &f, Mode::Online, probes(&GOOD), "pass");
        // Open while auth is not required: not asked.
        check_with("OPS004", &f, Mode::Online, probes(&OPEN), "pass");
        f.security.require_auth = true;
        let open = check_with("OPS004", &f, Mode::Online, probes(&OPEN), "fail");
        assert!(
            open.contains("a call to https://fn.example without a key: answered 200"),
            "{open}"
        );
        // Storage is exercised only when the service has it.
        check_with("OPS004", &f, Mode::Online, probes(&LOSES), "pass");
        f.storage = Some(storage());
        let lost = check_with("OPS004", &f, Mode::Online, probes(&LOSES), "fail");
        assert!(lost.contains("through external storage"), "{lost}");
        // Without a key to call with, only the refusal is checked.
        static KEYLESS: Deployed = Deployed {
            call: Answer::Wrong("401"),
            storage: Answer::Wrong("401"),
            without_key: Answer::Ok,
            key: false,
        };
        let keyless = check_with("OPS004", &f, Mode::Online, probes(&KEYLESS), "skip");
        assert!(keyless.contains("no `DEPLOY_KIT_API_KEY`"), "{keyless}");
        // Replicas come first.
        f.replicas = vec!["http://replica-a".into()];
        let down = check_with("OPS004", &f, Mode::Online, probes(&DOWN), "errored");
        assert!(down.contains("http://replica-a"), "{down}");
    }

    fn answer(answer: Answer) -> Result<(), SyntheticError> {
        match answer {
            Answer::Ok => Ok(()),
            Answer::Wrong(reason) => Err(SyntheticError::Failed(reason.into())),
            Answer::Down => Err(SyntheticError::Unreachable("connection refused".into())),
        }
    }

    impl SyntheticProbe for Synthetic {
        fn call_through_storage(&self, _: &str) -> Result<(), SyntheticError> {
            answer(self.storage)
        }
        fn stream_across(&self, _: &str, _: &str) -> Result<(), SyntheticError> {
            answer(self.stream)
        }
        fn call(&self, _: &str) -> Result<(), SyntheticError> {
            Ok(())
        }
        fn refused_without_key(&self, _: &str) -> Result<(), SyntheticError> {
            Ok(())
        }
    }

    #[test]
    fn ops003_synthetic() {
        let mut f = facts();
        f.storage = Some(storage());
        f.replicas = vec!["http://a".into(), "http://b".into()];
        check("OPS003", &f, "skip");
        let probes = |p: &'static Synthetic| Probes {
            synthetic: Some(p),
            ..Probes::default()
        };
        static GOOD: Synthetic = Synthetic {
            storage: Answer::Ok,
            stream: Answer::Ok,
        };
        static BAD: Synthetic = Synthetic {
            storage: Answer::Wrong("403"),
            stream: Answer::Wrong("token rejected"),
        };
        static DOWN: Synthetic = Synthetic {
            storage: Answer::Down,
            stream: Answer::Down,
        };
        static HALF_DOWN: Synthetic = Synthetic {
            storage: Answer::Down,
            stream: Answer::Wrong("token rejected"),
        };
        check_with("OPS003", &f, Mode::Online, Probes::default(), "skip");
        check_with("OPS003", &f, Mode::Online, probes(&GOOD), "pass");
        let message = check_with("OPS003", &f, Mode::Online, probes(&BAD), "fail");
        assert!(message.contains("external storage") && message.contains("continued on http://b"));
        let message = check_with("OPS003", &f, Mode::Online, probes(&DOWN), "errored");
        assert!(message.contains("connection refused"), "{message}");
        // A wrong answer is a finding even when another step could not run.
        let message = check_with("OPS003", &f, Mode::Online, probes(&HALF_DOWN), "fail");
        assert!(message.contains("token rejected"), "{message}");
    }
}
