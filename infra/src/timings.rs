//! Where the time of one `up` (or `rollback`) went: build, push, provision,
//! smoke. Each phase is measured where it happens ([`measure`]) and counted
//! *exclusively*: a doctor run inside an engine's `up` counts as smoke, not
//! also as provisioning. `up` prints the [`Summary`] as its last progress
//! line and puts it into its `--json` document (`phases`); `kit-bench
//! --phases deploy` reads it from there.

use std::cell::RefCell;
use std::time::Instant;

use serde::Serialize;

/// A part of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Compiling the service and packaging it (zip, image layer and config).
    Build,
    /// Uploading the image to its registry.
    Push,
    /// Creating or updating the platform's resources, up to a service that answers.
    Provision,
    /// The post-`up` doctor (`--online`): probes and calls against the deployment.
    Smoke,
}

thread_local! {
    /// Seconds per phase, and a stack of the seconds measured inside each
    /// running [`measure`] (subtracted from it).
    static TIMES: RefCell<(Summary, Vec<f64>)> = RefCell::new((Summary::default(), Vec::new()));
}

/// Seconds spent in each phase so far (exclusive of nested phases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub build: f64,
    pub push: f64,
    pub provision: f64,
    pub smoke: f64,
}

impl Summary {
    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Build => &mut self.build,
            Phase::Push => &mut self.push,
            Phase::Provision => &mut self.provision,
            Phase::Smoke => &mut self.smoke,
        }
    }

    /// `build 41.2 s, push 0.3 s, provision 2.0 s, smoke 0.4 s`.
    pub fn line(&self) -> String {
        format!(
            "build {:.1} s, push {:.1} s, provision {:.1} s, smoke {:.1} s",
            self.build, self.push, self.provision, self.smoke
        )
    }

    /// The summary rounded to milliseconds, for JSON.
    pub fn rounded(&self) -> Summary {
        let r = |s: f64| (s * 1000.0).round() / 1000.0;
        Summary {
            build: r(self.build),
            push: r(self.push),
            provision: r(self.provision),
            smoke: r(self.smoke),
        }
    }
}

/// Runs `work` and counts its time, less what nested [`measure`]s counted,
/// to `phase`.
pub fn measure<T>(phase: Phase, work: impl FnOnce() -> T) -> T {
    TIMES.with(|t| t.borrow_mut().1.push(0.0));
    let started = Instant::now();
    let value = work();
    let seconds = started.elapsed().as_secs_f64();
    TIMES.with(|t| {
        let mut t = t.borrow_mut();
        let nested = t.1.pop().unwrap_or(0.0);
        *t.0.slot(phase) += (seconds - nested).max(0.0);
        if let Some(outer) = t.1.last_mut() {
            *outer += seconds;
        }
    });
    value
}

/// Moves `seconds` from one phase to another (a build reports how much of
/// it was the push).
pub fn reattribute(from: Phase, to: Phase, seconds: f64) {
    TIMES.with(|t| {
        let mut t = t.borrow_mut();
        let moved = seconds.min(*t.0.slot(from)).max(0.0);
        *t.0.slot(from) -= moved;
        *t.0.slot(to) += moved;
    });
}

/// What has been measured on this thread so far.
pub fn summary() -> Summary {
    TIMES.with(|t| t.borrow().0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nested_phases_count_once() {
        measure(Phase::Provision, || {
            std::thread::sleep(Duration::from_millis(30));
            measure(Phase::Smoke, || {
                std::thread::sleep(Duration::from_millis(50))
            });
        });
        measure(Phase::Build, || {
            std::thread::sleep(Duration::from_millis(40))
        });
        reattribute(Phase::Build, Phase::Push, 0.01);
        let s = summary();
        assert!(s.smoke >= 0.05, "{s:?}");
        assert!(
            s.provision >= 0.03 && s.provision < 0.05,
            "smoke is not also provisioning: {s:?}"
        );
        assert!(s.build >= 0.03 && (s.push - 0.01).abs() < 1e-9, "{s:?}");
        let fixed = Summary {
            build: 41.24,
            push: 0.31,
            provision: 2.0,
            smoke: 0.449,
        };
        assert_eq!(
            fixed.line(),
            "build 41.2 s, push 0.3 s, provision 2.0 s, smoke 0.4 s"
        );
        assert_eq!(fixed.rounded().smoke, 0.449);
    }
}
