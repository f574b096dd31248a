//! `docs/checks.md`, generated from the registry and the platform table.

use crate::platform::{HEADROOM_PERCENT, Platform, human_bytes};
use crate::registry::{CHECKS, Mode};

pub fn checks_markdown() -> String {
    let mut out = String::from(
        "# Doctor checks\n\n\
         <!-- Generated from checks/src/registry.rs and checks/src/platform.rs by\n     \
         `deploy-kit doctor --list-checks --format markdown > docs/checks.md`. Do not edit. -->\n\n\
         `deploy-kit doctor` (and `kit-service doctor` inside the container) runs every check\n\
         below. Ids are stable; the alias is accepted wherever an id is (`--explain`, waivers).\n\
         Online checks run only with `--online`; offline runs skip them with a reason.\n\n\
         Exit codes: 0 nothing failed at or above `--fail-on`; 1 findings at or above it;\n\
         2 usage or config error; 3 a check could not run (and nothing failed).\n\n\
         | Id | Alias | Severity | Mode | Finds |\n|---|---|---|---|---|\n",
    );
    for check in CHECKS {
        out.push_str(&format!(
            "| [{}](#{}) | `{}` | {} | {} | {} |\n",
            check.id,
            check.anchor(),
            check.alias,
            check.severity.name(),
            mode(check.mode),
            check.message
        ));
    }
    out.push_str(&format!(
        "\n## Platform limits\n\n\
         The LIM and OPS checks judge settings against this table, keeping {HEADROOM_PERCENT}% of a body\n\
         limit free for headers, IPC framing and batch metadata.\n\n\
         | Platform (`platform:`) | Request limit | Response limit | Timeout | Termination grace |\n|---|---|---|---|---|\n"
    ));
    for platform in Platform::ALL {
        let limits = platform.limits();
        let bytes = |b: Option<u64>| b.map_or("none".to_string(), human_bytes);
        let timeout = limits.timeout_seconds.map_or("none".to_string(), |t| {
            format!("{t} s ({})", limits.timeout_kind)
        });
        let grace = limits
            .termination_grace_seconds
            .map_or("-".to_string(), |g| format!("{g} s"));
        out.push_str(&format!(
            "| `{}` | {} | {} | {timeout} | {grace} |\n",
            platform.name(),
            bytes(limits.request_bytes),
            bytes(limits.response_bytes)
        ));
    }
    for check in CHECKS {
        out.push_str(&format!(
            "\n## {} {}\n\n- Severity: {}; mode: {}\n- Finds: {}\n- Why: {}\n- Fix: {}\n",
            check.id,
            check.alias,
            check.severity.name(),
            mode(check.mode),
            check.message,
            check.rationale,
            check.hint
        ));
    }
    out
}

fn mode(mode: Mode) -> &'static str {
    match mode {
        Mode::Offline => "offline",
        Mode::Online => "online",
    }
}
