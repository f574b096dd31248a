//! ART001: the package, bin target and features the deploy builds exist in
//! the cargo workspace, as `cargo metadata` reports it.

use super::{Verdict, errored};
use crate::facts::{CargoWorkspace, Facts};

pub(super) fn in_workspace(facts: &Facts) -> Verdict {
    let Some(artifact) = &facts.artifact else {
        return Verdict::Skip(
            "no cargo build here: the service binary is prebuilt, or the service judges its own environment"
                .into(),
        );
    };
    match &artifact.cargo {
        CargoWorkspace::Unavailable { reason } => errored(reason.clone()),
        CargoWorkspace::Found { packages } => match artifact.problem(packages) {
            None => Verdict::Pass,
            Some(problem) => Verdict::Fail(problem),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::facts::{ArtifactFacts, CargoPackage, CargoWorkspace, RequiredFeature};
    use crate::rules::test_support::{check, facts};

    fn workspace() -> Vec<CargoPackage> {
        vec![
            CargoPackage {
                name: "acme-rpc".into(),
                bins: vec!["acme".into()],
                features: vec!["fast".into(), "lambda".into()],
            },
            CargoPackage {
                name: "acme-types".into(),
                bins: Vec::new(),
                features: Vec::new(),
            },
        ]
    }

    fn artifact(package: Option<&str>, binary: Option<&str>, features: &[&str]) -> ArtifactFacts {
        ArtifactFacts {
            workspace: ".".into(),
            package: package.map(Into::into),
            binary: binary.map(Into::into),
            features: features
                .iter()
                .map(|name| RequiredFeature {
                    name: (*name).into(),
                    wanted_by: "`service.features`".into(),
                })
                .collect(),
            cargo: CargoWorkspace::Found {
                packages: workspace(),
            },
        }
    }

    fn judge(artifact: ArtifactFacts, expect: &str) -> String {
        let mut facts = facts();
        facts.artifact = Some(artifact);
        check("ART001", &facts, expect)
    }

    #[test]
    fn an_existing_package_binary_and_features_pass() {
        judge(
            artifact(Some("acme-rpc"), Some("acme"), &["fast", "lambda"]),
            "pass",
        );
    }

    #[test]
    fn a_missing_name_is_named_with_what_exists() {
        let message = judge(artifact(Some("kit-service"), None, &[]), "fail");
        assert_eq!(
            message,
            "no package `kit-service` in the cargo workspace `.`; its packages: `acme-rpc`, `acme-types`"
        );
        let message = judge(artifact(Some("acme-rpc"), None, &[]), "fail");
        assert_eq!(
            message,
            "package `acme-rpc` has no bin target `acme-rpc`; its bin targets: `acme`"
        );
        let message = judge(artifact(Some("acme-rpc"), Some("acme"), &["s3"]), "fail");
        assert!(
            message.contains("no feature `s3` (wanted by `service.features`)")
                && message.contains("its features: `fast`, `lambda`"),
            "{message}"
        );
        let message = judge(artifact(None, None, &[]), "fail");
        assert!(
            message.contains("candidates: `acme-rpc (bins: acme)`"),
            "{message}"
        );
    }

    #[test]
    fn no_cargo_is_could_not_run_and_no_build_is_a_skip() {
        let mut unavailable = artifact(Some("acme-rpc"), None, &[]);
        unavailable.cargo = CargoWorkspace::Unavailable {
            reason: "no `Cargo.toml` in `.`".into(),
        };
        judge(unavailable, "errored");
        check("ART001", &facts(), "skip");
    }
}
