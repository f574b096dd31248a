//! Progress for waits, so a run is never silent for a minute.
//!
//! On a terminal ([`Style::Terminal`]) a wait that lasts longer than a
//! second gets one line, redrawn in place with `\r` every tenth of a second
//! and showing the seconds elapsed; the line is cleared when the wait ends,
//! and the caller prints the outcome. Anywhere else ([`Style::Plain`]:
//! a pipe, a file, CI, `TERM=dumb`) nothing is redrawn: a wait prints one
//! plain line when it passes [`Timing::plain_every`] (15 s) and one more each
//! 15 s after. Neither style writes an ANSI escape (no colour at all, so
//! `NO_COLOR` holds trivially); `DEPLOY_KIT_PROGRESS=plain` forces plain
//! lines on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where progress is written, shared by a step's owner and its ticker.
pub type SharedOut = Arc<Mutex<Box<dyn Write + Send>>>;

/// Wraps a writer for [`Ticker::start`].
pub fn shared(out: Box<dyn Write + Send>) -> SharedOut {
    Arc::new(Mutex::new(out))
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One line redrawn in place with the elapsed time.
    Terminal,
    /// Plain lines now and then; no carriage returns.
    Plain,
}

impl Style {
    /// [`Style::Terminal`] when stderr is a terminal (and `TERM` is not
    /// `dumb`, and `DEPLOY_KIT_PROGRESS` is not `plain`), else [`Style::Plain`].
    pub fn of_stderr() -> Style {
        let term_dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let forced_plain = std::env::var("DEPLOY_KIT_PROGRESS").is_ok_and(|p| p == "plain");
        if std::io::stderr().is_terminal() && !term_dumb && !forced_plain {
            Style::Terminal
        } else {
            Style::Plain
        }
    }
}

/// When a [`Ticker`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A wait shorter than this draws nothing on a terminal.
    pub first_draw: Duration,
    /// How often the terminal line is redrawn.
    pub redraw: Duration,
    /// How often a plain line is written (the first after this long).
    pub plain_every: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            first_draw: Duration::from_secs(1),
            redraw: Duration::from_millis(100),
            plain_every: Duration::from_secs(15),
        }
    }
}

/// Shows that `what` is still going, from a thread of its own, until
/// [`Ticker::finish`] (or drop).
#[derive(Debug)]
pub struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts showing `what` (e.g. `lambda function jsonsvc-ci: waiting`).
    pub fn start(out: SharedOut, style: Style, what: String, timing: Timing) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            match style {
                Style::Terminal => terminal(&out, &stopped, &what, started, timing),
                Style::Plain => plain(&out, &stopped, &what, started, timing),
            }
        });
        Ticker {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the ticker; on a terminal its line is cleared first.
    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender wakes the thread with `Disconnected`.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Runs `work` with a ticker showing `what` on stderr in its detected style.
pub fn while_waiting<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let ticker = Ticker::start(
        shared(Box::new(std::io::stderr())),
        Style::of_stderr(),
        what.to_string(),
        Timing::default(),
    );
    let value = work();
    ticker.finish();
    value
}

fn terminal(
    out: &SharedOut,
    stopped: &mpsc::Receiver<()>,
    what: &str,
    started: Instant,
    timing: Timing,
) {
    let mut drawn = 0usize;
    let mut wait = timing.first_draw;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {
                let line = format!("  {what} ({:.1} s)", started.elapsed().as_secs_f64());
                // Pad over a longer previous line; `\r` only, no escapes.
                let pad = drawn.saturating_sub(line.len());
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                let _ = write!(out, "\r{line}{:pad$}", "");
                let _ = out.flush();
                drawn = line.len();
                wait = timing.redraw;
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if drawn > 0 {
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = write!(out, "\r{:drawn$}\r", "");
                    let _ = out.flush();
                }
                return;
            }
        }
    }
}

fn plain(
    out: &SharedOut,
    stopped: &mpsc::Receiver<()>,
    what: &str,
    started: Instant,
    timing: Timing,
) {
    loop {
        match stopped.recv_timeout(timing.plain_every) {
            Err(RecvTimeoutError::Timeout) => {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(
                    out,
                    "  {what}: still going ({} s)",
                    started.elapsed().as_secs()
                );
                let _ = out.flush();
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn fast() -> Timing {
        Timing {
            first_draw: Duration::from_millis(50),
            redraw: Duration::from_millis(20),
            plain_every: Duration::from_millis(60),
        }
    }

    #[test]
    fn a_terminal_line_is_redrawn_with_the_time_and_cleared_at_the_end() {
        let captured = Captured::default();
        let ticker = Ticker::start(
            shared(Box::new(captured.clone())),
            Style::Terminal,
            "bucket: creating".into(),
            fast(),
        );
        std::thread::sleep(Duration::from_millis(300));
        ticker.finish();
        let text = captured.text();
        let draws = text.matches("\r  bucket: creating (").count();
        assert!(draws >= 2, "redrawn in place: {text:?}");
        assert!(text.contains(" s)"), "elapsed seconds: {text:?}");
        assert!(
            text.ends_with('\r'),
            "cleared for the outcome line: {text:?}"
        );
        assert!(!text.contains('\n'), "one line only: {text:?}");
        assert!(!text.contains('\u{1b}'), "no ANSI escapes: {text:?}");
    }

    #[test]
    fn a_short_wait_draws_nothing() {
        let captured = Captured::default();
        let ticker = Ticker::start(
            shared(Box::new(captured.clone())),
            Style::Terminal,
            "quick".into(),
            Timing {
                first_draw: Duration::from_secs(5),
                ..fast()
            },
        );
        ticker.finish();
        let plain = Ticker::start(
            shared(Box::new(captured.clone())),
            Style::Plain,
            "quick".into(),
            Timing::default(),
        );
        drop(plain);
        assert_eq!(captured.text(), "");
    }

    #[test]
    fn plain_lines_come_every_interval_without_carriage_returns() {
        let captured = Captured::default();
        let ticker = Ticker::start(
            shared(Box::new(captured.clone())),
            Style::Plain,
            "function: waiting for Active".into(),
            fast(),
        );
        std::thread::sleep(Duration::from_millis(300));
        ticker.finish();
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 2, "{text:?}");
        for line in lines {
            assert!(
                line.starts_with("  function: waiting for Active: still going ("),
                "{line:?}"
            );
        }
        assert!(!text.contains('\r') && !text.contains('\u{1b}'), "{text:?}");
    }
}
