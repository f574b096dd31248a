//! The rotation state machine, as pure data: which phase a target is in,
//! what the next step may be, and when retiring the old key becomes safe.
//!
//! `idle --stage--> staged --promote--> promoted --retire--> idle`. Every step
//! changes the key store and then rolls the replicas; `rolled` is false in
//! between, so a failed roll is finished before anything else happens.
//!
//! The timing rule: a stream's call token is minted once, at `/init`, and
//! lives `token_ttl_seconds`. Replicas sign with the old key until the promote
//! roll finishes, so a token signed by the old key may be valid until that
//! moment plus the token lifetime; retiring earlier fails those streams.
//!
//! The state file holds fingerprints and times, never a key value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::CommandError;

/// Schema id of the rotation state file.
pub const ROTATION_SCHEMA: &str = "deploy-kit.rotation/v1";
/// The rotation state file inside the target's state directory.
pub const ROTATION_FILE: &str = "rotation.json";
/// Exit code of a step refused because it is too early (`EX_TEMPFAIL`): run it again later.
pub const TOO_EARLY_EXIT: u8 = 75;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// One key signs and verifies.
    Idle,
    /// A new key verifies; the old one still signs.
    Staged,
    /// The new key signs; the old one still verifies.
    Promoted,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Staged => "staged",
            Phase::Promoted => "promoted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Stage,
    Promote,
    Retire,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Stage => "stage",
            Step::Promote => "promote",
            Step::Retire => "retire",
        }
    }

    /// The phase this step leads to.
    pub fn target_phase(self) -> Phase {
        match self {
            Step::Stage => Phase::Staged,
            Step::Promote => Phase::Promoted,
            Step::Retire => Phase::Idle,
        }
    }
}

/// `.deploy-kit/<environment>/<target>/rotation.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationState {
    /// [`ROTATION_SCHEMA`].
    pub schema: String,
    pub phase: Phase,
    /// The replicas run with this phase's keys (false: the store changed, the roll did not finish).
    pub rolled: bool,
    /// Fingerprints (as `/healthz` reports them), never values.
    pub primary: Option<String>,
    pub pending: Option<String>,
    pub previous: Option<String>,
    /// `signing_key.token_ttl_seconds` when the rotation was promoted.
    pub token_ttl_seconds: u64,
    /// Unix seconds.
    pub staged_at: Option<u64>,
    /// When the promote roll finished: no replica signs with the old key after it.
    pub promoted_at: Option<u64>,
    pub retired_at: Option<u64>,
}

impl RotationState {
    pub fn new(token_ttl_seconds: u64) -> RotationState {
        RotationState {
            schema: ROTATION_SCHEMA.to_string(),
            phase: Phase::Idle,
            rolled: true,
            primary: None,
            pending: None,
            previous: None,
            token_ttl_seconds,
            staged_at: None,
            promoted_at: None,
            retired_at: None,
        }
    }

    /// When retiring the old key stops failing streams; `None` if never
    /// (tokens that never expire) or not promoted yet.
    pub fn retire_allowed_at(&self) -> Option<u64> {
        if self.phase != Phase::Promoted || self.token_ttl_seconds == 0 {
            return None;
        }
        self.promoted_at
            .map(|at| at.saturating_add(self.token_ttl_seconds))
    }

    /// Reads the state; `Ok(None)` when no rotation was ever run.
    pub fn load(path: &Path) -> Result<Option<RotationState>, CommandError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CommandError::new(
                    format!("failed to read `{}`: {error}", path.display()),
                    "check the permissions of the `.deploy-kit` directory",
                    1,
                ));
            }
        };
        let state: RotationState = serde_json::from_str(&text).map_err(|error| {
            CommandError::new(
                format!("`{}` is not a rotation state file: {error}", path.display()),
                format!(
                    "delete `{}`; the next `deploy-kit secrets rotate` rebuilds it from the key store (and rolls the replicas again)",
                    path.display()
                ),
                1,
            )
        })?;
        if state.schema != ROTATION_SCHEMA {
            return Err(CommandError::new(
                format!(
                    "`{}` has schema `{}`; this deploy-kit reads `{ROTATION_SCHEMA}`",
                    path.display(),
                    state.schema
                ),
                "use the deploy-kit version that wrote it",
                1,
            ));
        }
        Ok(Some(state))
    }

    /// Writes atomically: a temp file beside it, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), CommandError> {
        let mut text = serde_json::to_string_pretty(self).expect("rotation state serializes");
        text.push('\n');
        super::store::write_atomically(path, text.as_bytes(), 0o644).map_err(|error| {
            CommandError::new(
                format!("failed to write `{}`: {error}", path.display()),
                "check that the `.deploy-kit` directory is writable, then run the command again",
                1,
            )
        })
    }
}

/// What `--phase` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    One(Step),
    /// As far as is safe now.
    Auto,
}

/// Why a step may not run now: the message, the hint and the exit code.
pub fn refusal(
    state: &RotationState,
    step: Step,
    now: u64,
    force: bool,
    command: &str,
) -> Option<CommandError> {
    let expected = match step {
        Step::Stage => Phase::Idle,
        Step::Promote => Phase::Staged,
        Step::Retire => Phase::Promoted,
    };
    if state.phase != expected {
        let hint = match state.phase {
            Phase::Idle => format!("start a rotation with `{command} --phase stage`"),
            Phase::Staged => {
                format!("the new key is staged; promote it with `{command} --phase promote`")
            }
            Phase::Promoted => format!(
                "the last rotation still keeps its old key; retire it first with `{command} --phase retire`"
            ),
        };
        return Some(CommandError::new(
            format!(
                "cannot {} now: the rotation is `{}`, {} needs `{}`",
                step.name(),
                state.phase.name(),
                step.name(),
                expected.name()
            ),
            hint,
            2,
        ));
    }
    if step != Step::Retire || force {
        return None;
    }
    match state.retire_allowed_at() {
        Some(at) if now >= at => None,
        Some(at) => Some(CommandError::new(
            format!(
                "too early to retire the old key: streams opened before the promote may hold tokens signed by it until {} ({} s from now; `token_ttl_seconds` is {})",
                utc(at),
                at - now,
                state.token_ttl_seconds
            ),
            format!(
                "run `{command} --phase retire` after {}; `--force` retires now and fails those streams",
                utc(at)
            ),
            TOO_EARLY_EXIT,
        )),
        None => Some(CommandError::new(
            "tokens never expire (`signing_key.token_ttl_seconds: 0`), so no wait makes retiring the old key safe",
            format!(
                "set `signing_key.token_ttl_seconds` and roll, or retire anyway with `{command} --phase retire --force`"
            ),
            2,
        )),
    }
}

/// The next step `--phase auto` takes from `state`, if any is safe now.
/// `done` holds the steps already taken in this run: auto makes at most one
/// full rotation and never starts a new one after retiring.
pub fn next_auto_step(state: &RotationState, now: u64, done: &[Step]) -> Option<Step> {
    let step = match state.phase {
        Phase::Idle if done.is_empty() => Step::Stage,
        Phase::Idle => return None,
        Phase::Staged => Step::Promote,
        Phase::Promoted => Step::Retire,
    };
    refusal(state, step, now, false, "")
        .is_none()
        .then_some(step)
}

/// `2026-01-15T10:00:00Z` for unix seconds (UTC, no leap seconds).
pub fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(phase: Phase, promoted_at: Option<u64>, ttl: u64) -> RotationState {
        RotationState {
            phase,
            promoted_at,
            ..RotationState::new(ttl)
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_768_471_200), "2026-01-15T10:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn steps_follow_the_phases() {
        let command = "deploy-kit secrets rotate";
        let idle = state(Phase::Idle, None, 60);
        assert!(refusal(&idle, Step::Stage, 0, false, command).is_none());
        let error = refusal(&idle, Step::Promote, 0, false, command).unwrap();
        assert_eq!(error.exit_code, 2);
        assert!(error.hint.contains("--phase stage"), "{}", error.hint);
        let staged = state(Phase::Staged, None, 60);
        assert!(refusal(&staged, Step::Promote, 0, false, command).is_none());
        assert!(refusal(&staged, Step::Retire, 0, true, command).is_some());
        let promoted = state(Phase::Promoted, Some(1000), 60);
        let error = refusal(&promoted, Step::Stage, 0, false, command).unwrap();
        assert!(error.hint.contains("--phase retire"), "{}", error.hint);
    }

    #[test]
    fn retire_waits_one_token_lifetime_after_the_promote_roll() {
        let command = "deploy-kit secrets rotate --target t";
        let promoted = state(Phase::Promoted, Some(1_768_471_200), 3600);
        assert_eq!(promoted.retire_allowed_at(), Some(1_768_474_800));
        let error = refusal(&promoted, Step::Retire, 1_768_471_200 + 10, false, command).unwrap();
        assert_eq!(error.exit_code, TOO_EARLY_EXIT);
        assert!(
            error.message.contains("2026-01-15T11:00:00Z"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("3590 s from now"),
            "{}",
            error.message
        );
        assert_eq!(
            error.hint,
            "run `deploy-kit secrets rotate --target t --phase retire` after 2026-01-15T11:00:00Z; `--force` retires now and fails those streams"
        );
        assert!(refusal(&promoted, Step::Retire, 1_768_474_800, false, command).is_none());
        assert!(refusal(&promoted, Step::Retire, 1_768_471_201, true, command).is_none());
        let forever = state(Phase::Promoted, Some(5), 0);
        assert!(refusal(&forever, Step::Retire, u64::MAX, false, command).is_some());
    }

    #[test]
    fn auto_goes_as_far_as_is_safe_and_makes_one_rotation() {
        let idle = state(Phase::Idle, None, 60);
        assert_eq!(next_auto_step(&idle, 0, &[]), Some(Step::Stage));
        assert_eq!(next_auto_step(&idle, 0, &[Step::Retire]), None);
        let staged = state(Phase::Staged, None, 60);
        assert_eq!(
            next_auto_step(&staged, 0, &[Step::Stage]),
            Some(Step::Promote)
        );
        let promoted = state(Phase::Promoted, Some(100), 60);
        assert_eq!(next_auto_step(&promoted, 159, &[]), None);
        assert_eq!(next_auto_step(&promoted, 160, &[]), Some(Step::Retire));
    }
}
