//! The checks themselves: one function per registered id, facts in, outcome out.

mod artifact;
mod config;
mod keys;
mod limits;
mod operations;
mod security;
mod storage;

use crate::Outcome;
use crate::facts::Facts;
use crate::probe::Probes;
use crate::registry::{Check, Mode};

pub(crate) struct Context<'a> {
    pub mode: Mode,
    pub probes: Probes<'a>,
}

impl Context<'_> {
    /// The skip every online check gives in an offline run.
    fn offline(&self) -> Option<Outcome> {
        (self.mode == Mode::Offline)
            .then(|| skip("offline run; use `--online` to check live replicas and storage"))
    }
}

pub(crate) fn evaluate(check: &Check, facts: &Facts, context: &Context<'_>) -> Outcome {
    let verdict = match check.id {
        "KEY001" => keys::shared_key(facts),
        "KEY002" => keys::weak_key(facts),
        "KEY003" => keys::literal_key(facts),
        "KEY004" => keys::replica_mismatch(facts, context),
        "KEY005" => keys::unfinished_rotation(facts),
        "KEY006" => keys::tokens_never_expire(facts),
        "KEY007" => keys::readable_secret_state(facts),
        "LIM001" => limits::request_limit(facts),
        "LIM002" => limits::response_limit(facts),
        "LIM003" => limits::timeouts(facts),
        "LIM004" => limits::size_limited_without_storage(facts),
        "LIM005" => limits::small_requests_without_uploads(facts),
        "STO001" => storage::reachable(facts, context),
        "STO002" => storage::round_trip(facts, context),
        "STO003" => storage::https_urls(facts),
        "STO004" => storage::lifecycle_expiry(facts, context),
        "STO005" => storage::abort_multipart(facts, context),
        "STO006" => storage::presign_ttl(facts),
        "STO007" => storage::bucket_cors(facts, context),
        "STO008" => storage::bucket_name(facts),
        "STO009" => storage::prefix_not_empty(facts),
        "SEC001" => security::auth_required(facts),
        "SEC002" => security::cors_wildcard(facts),
        "SEC003" => security::reflection(facts),
        "SEC004" => security::rate_limit(facts),
        "SEC005" => security::debug(facts),
        "SEC006" => security::api_key_expiring(facts),
        "OPS001" => operations::probes(facts),
        "OPS002" => operations::shutdown_grace(facts),
        "OPS003" => operations::synthetic(facts, context),
        "OPS004" => operations::smoke(facts, context),
        "CFG001" => config::service_accepts_settings(facts),
        "ART001" => artifact::in_workspace(facts),
        other => Verdict::Skip(format!("`{other}` has no implementation")),
    };
    match verdict {
        Verdict::Pass => Outcome::Pass,
        // A finding names the target it is about, so its hint is the exact command.
        Verdict::Fail(message) => Outcome::Fail {
            message,
            hint: check.hint.replace("<target>", &facts.target.name),
        },
        Verdict::Done(outcome) => outcome,
        Verdict::Skip(reason) => Outcome::Skip { reason },
    }
}

/// What a check function returns; the registry supplies the hint.
pub(crate) enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
    /// A finished outcome (online skips, could-not-run).
    Done(Outcome),
}

fn skip(reason: &str) -> Outcome {
    Outcome::Skip {
        reason: reason.to_string(),
    }
}

fn errored(reason: String) -> Verdict {
    Verdict::Done(Outcome::Errored { reason })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! One `check` helper for every rule test: facts in, expected outcome kind out.

    use super::*;
    use crate::date::Date;
    use crate::registry;

    pub fn today() -> Date {
        Date::parse("2026-01-10").unwrap()
    }

    pub fn facts() -> Facts {
        Facts::baseline(today())
    }

    pub fn outcome(id: &str, facts: &Facts, mode: Mode, probes: Probes<'_>) -> Outcome {
        let context = Context { mode, probes };
        evaluate(registry::find(id).unwrap(), facts, &context)
    }

    /// Asserts that check `id` gives `expect` ("pass", "fail", "skip",
    /// "errored") on `facts` offline, and returns the message or reason.
    pub fn check(id: &str, facts: &Facts, expect: &str) -> String {
        check_with(id, facts, Mode::Offline, Probes::default(), expect)
    }

    pub fn check_with(
        id: &str,
        facts: &Facts,
        mode: Mode,
        probes: Probes<'_>,
        expect: &str,
    ) -> String {
        let outcome = outcome(id, facts, mode, probes);
        let (kind, text) = match &outcome {
            Outcome::Pass => ("pass", String::new()),
            Outcome::Fail { message, .. } => ("fail", message.clone()),
            Outcome::Skip { reason } => ("skip", reason.clone()),
            Outcome::Errored { reason } => ("errored", reason.clone()),
            Outcome::Waived { message, .. } => ("waived", message.clone()),
        };
        assert_eq!(kind, expect, "{id}: {outcome:?}");
        text
    }
}
