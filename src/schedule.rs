//! Low-traffic windows: when a job may write.
//!
//! A job with a `schedule` writes only inside one of its windows, read on the wall clock of the
//! schedule's IANA time zone (chrono-tz: real rules, DST included, never hand-made offsets). Outside
//! them it is held exactly like a throttle: the batch in flight commits, no new one starts, and the
//! reason says when the next window opens.
//!
//! A window is `[DAYS ]HH:MM-HH:MM`. DAYS is a range (`Mon-Fri`), a list (`Sat,Sun`) or both
//! (`Mon-Wed,Fri`); without it the window is every day. A window may cross midnight (`22:00-02:00`)
//! and belongs to the day it *starts* on: `Fri 22:00-02:00` is open Friday night into Saturday.
//! `24:00` is allowed as an end. Everything here is pure (the clock is a parameter), so it is tested
//! without waiting for a real midnight or DST change.

use std::fmt;

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::spec::ScheduleSpec;

/// One example of each form, for error hints.
pub const WINDOW_EXAMPLE: &str = "`Mon-Fri 01:00-06:00`, `Sat,Sun 00:00-24:00` or `22:00-02:00`";

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;

/// One window: on which days it starts, and its wall-clock start and end in minutes after midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Indexed Monday = 0 .. Sunday = 6: the days the window *starts* on.
    days: [bool; 7],
    start: u32,
    /// `1..=1440`; at or before `start` when the window crosses midnight.
    end: u32,
}

impl Window {
    /// Parse `[DAYS ]HH:MM-HH:MM`. The error is a sentence about what is wrong (the caller adds the
    /// field and [`WINDOW_EXAMPLE`]).
    pub fn parse(text: &str) -> Result<Window, String> {
        let text = text.trim();
        let (days, times) = match text.rsplit_once(char::is_whitespace) {
            Some((days, times)) => (parse_days(days.trim())?, times),
            None => ([true; 7], text),
        };
        let Some((start, end)) = times.split_once('-') else {
            return Err(format!("`{times}` is not a time range `HH:MM-HH:MM`"));
        };
        let start = parse_time(start)?;
        let end = parse_time(end)?;
        if start == MINUTES_PER_DAY {
            return Err("a window cannot start at 24:00; write 00:00 on the next day".into());
        }
        if start == end || (start == 0 && end == 0) {
            return Err(format!(
                "starts and ends at {}: an empty window (for a whole day write `00:00-24:00`)",
                show_time(start)
            ));
        }
        let end = if end == 0 { MINUTES_PER_DAY } else { end };
        Ok(Window { days, start, end })
    }

    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// Whether a wall-clock moment (weekday index, minute of the day) is inside this window.
    fn contains(&self, weekday: usize, minute: u32) -> bool {
        if self.crosses_midnight() {
            (self.days[weekday] && minute >= self.start) || (self.days[(weekday + 6) % 7] && minute < self.end)
        } else {
            self.days[weekday] && minute >= self.start && minute < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days != [true; 7] {
            let names: Vec<&str> = (0..7).filter(|&d| self.days[d]).map(|d| DAY_NAMES[d]).collect();
            write!(f, "{} ", names.join(","))?;
        }
        write!(f, "{}-{}", show_time(self.start), show_time(self.end))
    }
}

fn show_time(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

fn parse_day(text: &str) -> Result<usize, String> {
    let lower = text.to_ascii_lowercase();
    const FULL: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    (0..7)
        .find(|&d| lower == DAY_NAMES[d].to_ascii_lowercase() || lower == FULL[d])
        .ok_or_else(|| format!("`{text}` is not a day; write Mon, Tue, Wed, Thu, Fri, Sat or Sun"))
}

/// `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri`; a range may wrap around the week (`Fri-Mon`).
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("`{text}` has an empty entry in its list of days"));
        }
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day(from.trim())?, parse_day(to.trim())?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[parse_day(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM`, 00:00 to 24:00.
fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time `HH:MM` between 00:00 and 24:00");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 || !h.chars().chain(m.chars()).all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Parse an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        let best = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| (strsim::jaro_winkler(&name.to_ascii_lowercase(), &tz.name().to_ascii_lowercase()), tz.name()))
            .filter(|(score, _)| *score >= 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((_, close)) => format!("`{name}` is not an IANA time zone; did you mean `{close}`?"),
            None => format!("`{name}` is not an IANA time zone"),
        }
    })
}

/// A job's windows in their time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    tz: Tz,
    windows: Vec<Window>,
    /// Set when the spec could not be read: the schedule then never opens (fail closed).
    broken: Option<String>,
}

/// Why a job is held by its schedule, and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// When the next window opens (`None`: no window ever opens, e.g. a broken schedule).
    pub next_open: Option<DateTime<Utc>>,
    /// For a person: `outside its schedule windows; the next opens at 2026-12-03 01:00 CET`.
    pub reason: String,
}

impl Schedule {
    /// The schedule of a spec that passed validation. Should it not parse after all, the schedule
    /// never opens: a job must not write outside windows it was given because of a bug here.
    pub fn from_spec(spec: &ScheduleSpec) -> Schedule {
        let windows: Result<Vec<Window>, String> = spec.windows.iter().map(|w| Window::parse(w)).collect();
        match (parse_timezone(&spec.timezone), windows) {
            (Ok(tz), Ok(windows)) if !windows.is_empty() => Schedule { tz, windows, broken: None },
            (tz, windows) => Schedule {
                tz: tz.unwrap_or(Tz::UTC),
                windows: Vec::new(),
                broken: Some(match windows {
                    Err(e) => format!("schedule.windows: {e}"),
                    Ok(w) if w.is_empty() => "schedule.windows is empty".into(),
                    Ok(_) => format!("schedule.timezone `{}` is unknown", spec.timezone),
                }),
            },
        }
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Whether the job may write at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz).naive_local();
        let weekday = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        self.windows.iter().any(|w| w.contains(weekday, minute))
    }

    /// The first instant at or after `at` inside a window (`at` itself when open now).
    ///
    /// Openness only changes where a window starts on the wall clock or where the clock jumps
    /// (DST): a start that falls in a spring-forward gap opens at the end of the gap, and one in a
    /// fall-back hour happens twice, so both instants are candidates. Each candidate is confirmed
    /// with [`Schedule::is_open`], which drops windows that do not exist on a given day.
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(at) {
            return Some(at);
        }
        let today = at.with_timezone(&self.tz).date_naive();
        let mut best: Option<DateTime<Utc>> = None;
        for offset in 0..=8 {
            let Some(date) = today.checked_add_signed(ChronoDuration::days(offset)) else { continue };
            let weekday = date.weekday().num_days_from_monday() as usize;
            for w in self.windows.iter().filter(|w| w.days[weekday]) {
                for candidate in self.instants(date, w.start) {
                    if candidate > at && self.is_open(candidate) && best.is_none_or(|b| candidate < b) {
                        best = Some(candidate);
                    }
                }
            }
        }
        best
    }

    /// The instants at which the wall clock of `date` shows `minute`: one, two in a fall-back hour,
    /// or, in a spring-forward gap, the first instant after the gap.
    fn instants(&self, date: NaiveDate, minute: u32) -> Vec<DateTime<Utc>> {
        let Some(naive) = date.and_hms_opt(minute / 60, minute % 60, 0) else { return Vec::new() };
        match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(a, b) => vec![a.with_timezone(&Utc), b.with_timezone(&Utc)],
            LocalResult::None => first_after_gap(self.tz, naive).into_iter().collect(),
        }
    }

    /// `None` when the job may write at `at`; otherwise why not and until when.
    pub fn closed(&self, at: DateTime<Utc>) -> Option<Closed> {
        if let Some(broken) = &self.broken {
            return Some(Closed { next_open: None, reason: format!("held: the schedule cannot be read ({broken})") });
        }
        if self.is_open(at) {
            return None;
        }
        let next_open = self.next_open(at);
        let windows: Vec<String> = self.windows.iter().map(|w| w.to_string()).collect();
        let reason = match next_open {
            Some(next) => format!(
                "outside its schedule windows ({} {}); the next opens at {}",
                windows.join(", "),
                self.tz.name(),
                self.show(next)
            ),
            None => format!("outside its schedule windows ({} {})", windows.join(", "), self.tz.name()),
        };
        Some(Closed { next_open, reason })
    }

    /// An instant on this schedule's wall clock, with its UTC time when the zone is not UTC.
    pub fn show(&self, at: DateTime<Utc>) -> String {
        let local = at.with_timezone(&self.tz);
        if self.tz == Tz::UTC {
            local.format("%Y-%m-%d %H:%M UTC").to_string()
        } else {
            format!("{} ({})", local.format("%Y-%m-%d %H:%M %Z"), at.format("%H:%M UTC"))
        }
    }
}

/// The first instant whose wall-clock time is after `naive`, for a `naive` in a DST gap.
fn first_after_gap(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps are at most a few hours (historically up to a day, e.g. Samoa 2011): walk minutes.
    (1..=26 * 60).find_map(|m| match tz.from_local_datetime(&(naive + ChronoDuration::minutes(m))) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        LocalResult::None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc)
    }

    fn schedule(tz: &str, windows: &[&str]) -> Schedule {
        let s = Schedule::from_spec(&ScheduleSpec {
            timezone: tz.into(),
            windows: windows.iter().map(|w| w.to_string()).collect(),
        });
        assert_eq!(s.broken, None);
        s
    }

    #[test]
    fn parses_the_forms() {
        let w = Window::parse("Mon-Fri 01:00-06:00").unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!((w.start, w.end), (60, 360));
        let w = Window::parse("Sat,Sun 00:00-24:00").unwrap();
        assert_eq!(w.days, [false, false, false, false, false, true, true]);
        assert_eq!((w.start, w.end), (0, 1440));
        let w = Window::parse("22:00-02:00").unwrap();
        assert_eq!(w.days, [true; 7]);
        assert!(w.crosses_midnight());
        let w = Window::parse("  fri-mon 9:30-10:00 ").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert_eq!(w.start, 570);
        assert_eq!(Window::parse("Mon-Wed,Fri 23:00-00:00").unwrap().to_string(), "Mon,Tue,Wed,Fri 23:00-24:00");
    }

    #[test]
    fn rejects_bad_windows_with_a_reason() {
        for (text, says) in [
            ("Mon-Fri 01:00", "not a time range"),
            ("Mo-Fr 01:00-06:00", "`Mo` is not a day"),
            ("25:00-06:00", "not a time"),
            ("01:60-06:00", "not a time"),
            ("1:00-6", "not a time"),
            ("24:00-06:00", "cannot start at 24:00"),
            ("24:30-06:00", "not a time"),
            ("06:00-06:00", "empty window"),
            ("00:00-00:00", "empty window"),
            ("Mon,,Tue 01:00-02:00", "empty entry"),
            ("", "not a time range"),
        ] {
            let e = Window::parse(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn timezones_are_iana_names() {
        assert_eq!(parse_timezone("Europe/Berlin").unwrap(), Tz::Europe__Berlin);
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        let e = parse_timezone("Europe/Berln").unwrap_err();
        assert!(e.contains("did you mean `Europe/Berlin`"), "{e}");
        assert!(parse_timezone("CEST+1").is_err());
    }

    #[test]
    fn open_and_next_open_on_weekdays() {
        // 2026-12-02 is a Wednesday.
        let s = schedule("UTC", &["Mon-Fri 01:00-06:00"]);
        assert!(s.is_open(utc("2026-12-02T01:00:00Z")));
        assert!(s.is_open(utc("2026-12-02T05:59:59Z")));
        assert!(!s.is_open(utc("2026-12-02T06:00:00Z")));
        assert_eq!(s.next_open(utc("2026-12-02T06:00:00Z")), Some(utc("2026-12-03T01:00:00Z")));
        assert_eq!(s.next_open(utc("2026-12-02T00:10:00Z")), Some(utc("2026-12-02T01:00:00Z")));
        // Friday after the window: Monday.
        assert_eq!(s.next_open(utc("2026-12-04T07:00:00Z")), Some(utc("2026-12-07T01:00:00Z")));
        let closed = s.closed(utc("2026-12-04T07:00:00Z")).unwrap();
        assert_eq!(
            closed.reason,
            "outside its schedule windows (Mon,Tue,Wed,Thu,Fri 01:00-06:00 UTC); the next opens at 2026-12-07 01:00 UTC"
        );
        assert_eq!(s.closed(utc("2026-12-02T02:00:00Z")), None);
    }

    #[test]
    fn a_window_across_midnight_belongs_to_its_start_day() {
        // Friday night into Saturday only. 2026-12-04 is a Friday.
        let s = schedule("UTC", &["Fri 22:00-02:00"]);
        assert!(s.is_open(utc("2026-12-04T23:00:00Z")));
        assert!(s.is_open(utc("2026-12-05T01:59:00Z")));
        assert!(!s.is_open(utc("2026-12-05T02:00:00Z")));
        // Thursday night is not in it, nor Saturday night.
        assert!(!s.is_open(utc("2026-12-04T01:00:00Z")));
        assert!(!s.is_open(utc("2026-12-05T23:00:00Z")));
        assert_eq!(s.next_open(utc("2026-12-05T02:00:00Z")), Some(utc("2026-12-11T22:00:00Z")));
        // Every day, and until 24:00.
        let s = schedule("UTC", &["22:00-02:00", "Sat,Sun 00:00-24:00"]);
        assert!(s.is_open(utc("2026-12-02T00:30:00Z")));
        assert!(s.is_open(utc("2026-12-05T12:00:00Z")));
        assert!(s.is_open(utc("2026-12-06T23:59:00Z")));
        assert_eq!(s.next_open(utc("2026-12-07T02:00:00Z")), Some(utc("2026-12-07T22:00:00Z")));
    }

    #[test]
    fn next_open_in_a_time_zone() {
        // Berlin is UTC+1 in December.
        let s = schedule("Europe/Berlin", &["Mon-Fri 01:00-06:00"]);
        assert!(s.is_open(utc("2026-12-02T00:30:00Z")));
        assert!(!s.is_open(utc("2026-12-02T05:30:00Z")));
        assert_eq!(s.next_open(utc("2026-12-02T05:30:00Z")), Some(utc("2026-12-03T00:00:00Z")));
        assert_eq!(s.show(utc("2026-12-03T00:00:00Z")), "2026-12-03 01:00 CET (00:00 UTC)");
    }

    #[test]
    fn daylight_saving_changes() {
        // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (gap); 2026-10-25 03:00 CEST -> 02:00 CET.
        let s = schedule("Europe/Berlin", &["01:00-06:00"]);
        // The night of the spring change is an hour shorter: 00:00Z .. 04:00Z.
        assert_eq!(s.next_open(utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T00:00:00Z")));
        assert!(s.is_open(utc("2026-03-29T03:59:00Z")));
        assert!(!s.is_open(utc("2026-03-29T04:00:00Z")));
        // The night of the autumn change is an hour longer: 23:00Z .. 05:00Z.
        assert_eq!(s.next_open(utc("2026-10-24T12:00:00Z")), Some(utc("2026-10-24T23:00:00Z")));
        assert!(s.is_open(utc("2026-10-25T04:59:00Z")));
        assert!(!s.is_open(utc("2026-10-25T05:00:00Z")));

        // A window starting inside the spring gap opens when the gap ends (03:00 CEST = 01:00Z).
        let s = schedule("Europe/Berlin", &["02:30-04:00"]);
        assert_eq!(s.next_open(utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
        // A window wholly inside the gap does not exist that day: the next day's.
        let s = schedule("Europe/Berlin", &["02:15-02:45"]);
        assert_eq!(s.next_open(utc("2026-03-28T12:00:00Z")), Some(utc("2026-03-30T00:15:00Z")));
        // In the repeated autumn hour a window opens at each occurrence of its start.
        let s = schedule("Europe/Berlin", &["02:00-02:30"]);
        assert_eq!(s.next_open(utc("2026-10-24T12:00:00Z")), Some(utc("2026-10-25T00:00:00Z")));
        assert!(!s.is_open(utc("2026-10-25T00:45:00Z")));
        assert_eq!(s.next_open(utc("2026-10-25T00:45:00Z")), Some(utc("2026-10-25T01:00:00Z")));
        // US rules differ in date: America/New_York springs forward 2026-03-08 02:00 EST.
        let s = schedule("America/New_York", &["Sun 01:00-03:00"]);
        assert!(s.is_open(utc("2026-03-08T06:59:00Z")));
        assert!(!s.is_open(utc("2026-03-08T07:00:00Z")), "03:00 EDT is past the window");
        assert_eq!(s.next_open(utc("2026-03-08T07:00:00Z")), Some(utc("2026-03-15T05:00:00Z")));
    }

    #[test]
    fn a_broken_schedule_never_opens() {
        let s =
            Schedule::from_spec(&ScheduleSpec { timezone: "Nowhere/Else".into(), windows: vec!["01:00-02:00".into()] });
        assert!(s.closed(utc("2026-12-02T01:30:00Z")).unwrap().reason.contains("cannot be read"));
        let s = Schedule::from_spec(&ScheduleSpec { timezone: "UTC".into(), windows: vec![] });
        assert!(s.closed(utc("2026-12-02T01:30:00Z")).is_some());
    }
}
