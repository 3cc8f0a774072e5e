//! CronJob schedules: Kubernetes' five-field cron syntax (and `@hourly`-style macros) in an
//! IANA time zone, answered in `SystemTime`. Parsing is croner's; this module only adds the
//! Kubernetes rules (five fields, no `TZ=` prefix) and the two questions the controller asks.
use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use std::str::FromStr;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `schedule` in `time_zone` (UTC when None). Errors read as field messages.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let s = schedule.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("spec.schedule may not name a time zone: use spec.timeZone".into());
        }
        if !s.starts_with('@') && s.split_whitespace().count() != 5 {
            return Err(format!(
                "spec.schedule must have five fields (minute hour day-of-month month day-of-week), got {schedule:?}"
            ));
        }
        let cron = croner::Cron::from_str(s)
            .map_err(|e| format!("spec.schedule {schedule:?} is invalid: {e}"))?;
        let tz = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| format!("spec.timeZone {name:?} is not a known IANA time zone"))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let local = whole_minute(t).with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc).into())
    }

    /// The latest scheduled time in `(after, now]`, if any: the run that is due now (older
    /// missed runs are not made up, as in Kubernetes, which starts only the most recent).
    pub fn latest_due(&self, after: SystemTime, now: SystemTime) -> Option<SystemTime> {
        let mut due = None;
        let mut t = after;
        // Bounded: a schedule missed for a long time is walked at most this many steps.
        for _ in 0..100_000 {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    due = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        due
    }
}

/// `t` with seconds and sub-seconds dropped: schedules have minute resolution.
fn whole_minute(t: SystemTime) -> DateTime<Utc> {
    let d: DateTime<Utc> = t.into();
    d.with_nanosecond(0)
        .and_then(|d| d.with_second(0))
        .unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn show(t: Option<SystemTime>) -> String {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "none".into())
    }

    #[test]
    fn next_and_latest_due() {
        let s = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            show(s.next_after(at("2026-01-01T10:07:30Z"))),
            "2026-01-01T10:15:00Z"
        );
        assert_eq!(
            show(s.next_after(at("2026-01-01T10:15:00Z"))),
            "2026-01-01T10:30:00Z"
        );
        assert_eq!(
            show(s.latest_due(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:59:59Z"))),
            "2026-01-01T10:45:00Z"
        );
        assert_eq!(
            show(s.latest_due(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:14:00Z"))),
            "none"
        );
    }

    #[test]
    fn time_zones_shift_the_clock() {
        // 09:00 on weekdays in Berlin is 08:00 UTC in winter.
        let s = Schedule::parse("0 9 * * 1-5", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            show(s.next_after(at("2026-01-02T09:30:00Z"))),
            "2026-01-05T08:00:00Z"
        );
        let daily = Schedule::parse("@daily", Some("America/New_York")).unwrap();
        assert_eq!(
            show(daily.next_after(at("2026-07-01T12:00:00Z"))),
            "2026-07-02T04:00:00Z"
        );
    }

    #[test]
    fn kubernetes_rules() {
        let err = |s: &str, tz: Option<&str>| Schedule::parse(s, tz).unwrap_err();
        assert!(err("* * * * * *", None).contains("five fields"));
        assert!(err("TZ=UTC * * * * *", None).contains("spec.timeZone"));
        assert!(err("61 * * * *", None).contains("invalid"));
        assert!(err("* * * * *", Some("Mars/Olympus")).contains("not a known IANA time zone"));
    }
}
