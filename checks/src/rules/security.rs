//! SEC001-SEC006: who may call the service and what it reveals.

use super::Verdict;
use crate::facts::Facts;

fn loopback_bind(bind: &str) -> bool {
    bind.starts_with("127.") || bind.starts_with("localhost") || bind.starts_with("[::1]")
}

pub(super) fn auth_required(facts: &Facts) -> Verdict {
    if facts.security.require_auth {
        return Verdict::Pass;
    }
    let exposed_bind = facts
        .target
        .bind
        .as_deref()
        .filter(|bind| !loopback_bind(bind));
    match (facts.target.public, exposed_bind) {
        (true, _) => Verdict::Fail(format!(
            "target `{}` is public and does not require auth",
            facts.target.name
        )),
        (false, Some(bind)) => Verdict::Fail(format!(
            "the service binds `{bind}` (not loopback) and does not require auth"
        )),
        (false, None) => Verdict::Pass,
    }
}

pub(super) fn cors_wildcard(facts: &Facts) -> Verdict {
    let security = &facts.security;
    let wildcard = security.cors_origins.iter().any(|o| o == "*");
    if wildcard && (security.require_auth || security.api_keys_configured) {
        Verdict::Fail("CORS origins include `*` while API keys are in use".into())
    } else {
        Verdict::Pass
    }
}

/// Days ahead SEC006 warns of an API key's expiry.
const KEY_EXPIRY_WARNING_DAYS: i64 = 14;

pub(super) fn api_key_expiring(facts: &Facts) -> Verdict {
    let mut findings = Vec::new();
    for key in &facts.security.api_keys {
        let Some(expiry) = key
            .expires
            .as_deref()
            .and_then(crate::api_keys::Expiry::parse)
        else {
            continue;
        };
        let days = facts.today.days_until(expiry.date());
        if days <= 0 {
            findings.push(format!("`{}` expired at {expiry}", key.name));
        } else if days <= KEY_EXPIRY_WARNING_DAYS {
            findings.push(format!(
                "`{}` expires at {expiry} (in {days} days)",
                key.name
            ));
        }
    }
    if findings.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("API key {}", findings.join(", ")))
    }
}

pub(super) fn reflection(facts: &Facts) -> Verdict {
    if facts.security.reflection && facts.target.production {
        Verdict::Fail(format!(
            "reflection is on for production target `{}`",
            facts.target.name
        ))
    } else {
        Verdict::Pass
    }
}

pub(super) fn rate_limit(facts: &Facts) -> Verdict {
    if facts.security.rate_limit.is_none() && facts.target.public {
        Verdict::Fail(format!(
            "public target `{}` has no rate limit",
            facts.target.name
        ))
    } else {
        Verdict::Pass
    }
}

pub(super) fn debug(facts: &Facts) -> Verdict {
    let on: Vec<&str> = [
        (facts.security.debug, "debug"),
        (facts.security.tracebacks, "tracebacks"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if on.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{} on", on.join(" and ")))
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::{check, facts};

    #[test]
    fn sec001_auth_required() {
        let mut f = facts();
        check("SEC001", &f, "pass");
        f.target.bind = Some("0.0.0.0:8080".into());
        assert!(check("SEC001", &f, "fail").contains("0.0.0.0:8080"));
        f.target.bind = None;
        f.target.public = true;
        check("SEC001", &f, "fail");
        f.security.require_auth = true;
        check("SEC001", &f, "pass");
    }

    #[test]
    fn sec006_api_key_expiring() {
        let mut f = facts();
        let key = |name: &str, expires: Option<&str>| crate::api_keys::KeyFacts {
            name: name.into(),
            expires: expires.map(str::to_string),
            scopes: Vec::new(),
        };
        let today = f.today;
        let in_days = |days: i64| format!("{}T00:00:00Z", today.add_days(days));
        f.security.api_keys = vec![key("ci", None), key("later", Some(&in_days(60)))];
        check("SEC006", &f, "pass");
        f.security.api_keys.push(key("soon", Some(&in_days(3))));
        let message = check("SEC006", &f, "fail");
        assert!(
            message.contains("`soon` expires at") && message.contains("in 3 days"),
            "{message}"
        );
        assert!(!message.contains("later"), "{message}");
        f.security.api_keys = vec![key("old", Some(&in_days(-1)))];
        assert!(check("SEC006", &f, "fail").contains("`old` expired at"));
    }

    #[test]
    fn sec002_cors_wildcard() {
        let mut f = facts();
        f.security.cors_origins = vec!["*".into()];
        check("SEC002", &f, "pass");
        f.security.api_keys_configured = true;
        check("SEC002", &f, "fail");
        f.security.cors_origins = vec!["https://app.example.com".into()];
        check("SEC002", &f, "pass");
    }

    #[test]
    fn sec003_reflection() {
        let mut f = facts();
        check("SEC003", &f, "pass");
        f.target.production = true;
        check("SEC003", &f, "fail");
        f.security.reflection = false;
        check("SEC003", &f, "pass");
    }

    #[test]
    fn sec004_rate_limit() {
        let mut f = facts();
        check("SEC004", &f, "pass");
        f.target.public = true;
        check("SEC004", &f, "fail");
        f.security.rate_limit = Some("100/60".into());
        check("SEC004", &f, "pass");
    }

    #[test]
    fn sec005_debug() {
        let mut f = facts();
        check("SEC005", &f, "pass");
        f.security.tracebacks = true;
        assert_eq!(check("SEC005", &f, "fail"), "tracebacks on");
    }
}
