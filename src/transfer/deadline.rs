//! When an invocation must be done, so a copy can stop cleanly before Lambda kills it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::TransferError;

/// The invocation's end, if it has one (tests and tools run without).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// Time kept back for aborting the upload and answering Lambda.
    const MARGIN: Duration = Duration::from_secs(5);

    pub const NONE: Self = Self(None);

    pub fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// From Lambda's `Lambda-Runtime-Deadline-Ms`: epoch milliseconds. Some emulators send a
    /// bare duration instead (cargo-lambda sends `600000`); a value too small to be a date this
    /// century is read that way.
    pub fn from_lambda(deadline_ms: u64) -> Self {
        const YEAR_2001_MS: u64 = 978_307_200_000;
        let left = if deadline_ms < YEAR_2001_MS {
            Duration::from_millis(deadline_ms)
        } else {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            Duration::from_millis(deadline_ms).saturating_sub(now)
        };
        Self::at(Instant::now() + left)
    }

    /// When a record must be done by, keeping `reserve` for the invocation to answer Lambda;
    /// `None` when the invocation has no deadline.
    pub fn less(self, reserve: Duration) -> Option<Instant> {
        self.0.map(|at| at.checked_sub(reserve).unwrap_or(at))
    }

    /// Fails if `remaining` bytes, at `rate` bytes a second so far, would not arrive in time.
    pub(super) fn check(self, remaining: u64, rate: Option<f64>) -> Result<(), TransferError> {
        let Some(deadline) = self.0 else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(Self::MARGIN);
        let needed = rate
            // No pace before the first byte: nothing to time the rest by.
            .filter(|r| r.is_normal())
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(remaining as f64 / r));
        if left.is_zero() || needed > left {
            return Err(TransferError::OutOfTime { remaining, seconds_left: left.as_secs() });
        }
        Ok(())
    }

    /// Fails if the rest of a file, `expected - received` bytes, would not arrive in time at the
    /// pace the copy has kept since `started`: checked before each part and each resume.
    pub(super) fn check_rest(
        self,
        expected: u64,
        received: u64,
        started: Instant,
    ) -> Result<(), TransferError> {
        let rate = received as f64 / started.elapsed().as_secs_f64().max(1e-3);
        self.check(expected.saturating_sub(received), Some(rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_deadlines_are_epoch_millis_or_a_bare_duration() {
        let left = |d: Deadline| d.0.unwrap().saturating_duration_since(Instant::now()).as_secs();
        let in_a_minute = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60);
        assert!((58..=60).contains(&left(Deadline::from_lambda(in_a_minute.as_millis() as u64))));
        assert!((598..=600).contains(&left(Deadline::from_lambda(600_000))));
        assert!(Deadline::from_lambda(1_000_000_000_000).check(0, None).is_err(), "a deadline in the past");
        assert!(Deadline::from_lambda(978_307_200_000).check(0, None).is_err(), "2001-01-01 is a date");
    }

    #[test]
    fn the_rest_of_a_file_is_timed_at_the_pace_so_far() {
        // 10,000 bytes in 10 s: 1,000 a second, with 100 s left after Lambda's margin.
        let deadline = Deadline::at(Instant::now() + Deadline::MARGIN + Duration::from_secs(100));
        let started = Instant::now() - Duration::from_secs(10);
        assert!(deadline.check_rest(100_000, 10_000, started).is_ok(), "90,000 bytes left: 90 s");
        assert!(deadline.check_rest(120_000, 10_000, started).is_err(), "110,000 bytes left: 110 s");
        assert!(deadline.check_rest(1_000_000, 10_000, started).is_err(), "990 s");
        assert!(Deadline::NONE.check_rest(1_000_000, 10_000, started).is_ok(), "no deadline");
        assert!(deadline.check_rest(1_000_000, 0, started).is_ok(), "no byte yet: no pace to judge by");
    }
}
