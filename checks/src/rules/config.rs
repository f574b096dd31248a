//! CFG001: the service's own configuration parser, run before the deploy.

use super::Verdict;
use crate::facts::Facts;

pub(super) fn service_accepts_settings(facts: &Facts) -> Verdict {
    match &facts.service_config_problems {
        None => Verdict::Skip(
            "the service parses its own environment at start (`kit-service doctor` runs after that)"
                .into(),
        ),
        Some(problems) if problems.is_empty() => Verdict::Pass,
        Some(problems) => Verdict::Fail(format!(
            "the service would refuse to start: {}",
            problems.join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{check, facts};

    #[test]
    fn cfg001_service_accepts_settings() {
        let mut f = facts();
        check("CFG001", &f, "skip");
        f.service_config_problems = Some(Vec::new());
        check("CFG001", &f, "pass");
        f.service_config_problems = Some(vec![
            "`KIT_RATE_LIMIT`: expected `N/SECONDS`, got `fast`".into(),
        ]);
        let message = check("CFG001", &f, "fail");
        assert!(message.contains("`KIT_RATE_LIMIT`"), "{message}");
    }
}
