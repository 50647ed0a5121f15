//! Event-time windows with Spark's rules: `window(ts, size, slide, start)`, start inclusive,
//! end exclusive, aligned to the Unix epoch plus `start`.
//!
//! Event times come from the records, so any value can arrive: every computation here is
//! checked, and a time whose windows cannot be represented is [`OutOfRange`], never a panic
//! or a wrapped value (which once made one record assign itself billions of windows).

/// The earliest event time weir takes: 0001-01-01T00:00:00Z, the start of Spark's (and Delta's)
/// timestamp range, in microseconds since the Unix epoch.
pub const MIN_EVENT_TIME: i64 = -62_135_596_800_000_000;
/// The latest event time weir takes: 9999-12-31T23:59:59.999999Z, the end of that range.
pub const MAX_EVENT_TIME: i64 = 253_402_300_799_999_999;

/// An event time outside [`MIN_EVENT_TIME`]..=[`MAX_EVENT_TIME`], or whose windows would reach
/// past what a timestamp can hold. Its text starts with the dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "event time out of range: {0} microseconds since 1970-01-01 (event times must lie between \
     0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z, and so must their windows)"
)]
pub struct OutOfRange(pub i64);

/// `ts` when it lies in the range of event times weir takes.
pub fn check_event_time(ts: i64) -> Result<i64, OutOfRange> {
    if (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts) {
        Ok(ts)
    } else {
        Err(OutOfRange(ts))
    }
}

/// A window `[start, end)` in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// Tumbling (`slide == size`), sliding (`slide < size`) or offset (`start > 0`) windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub size: i64,
    pub slide: i64,
    pub start: i64,
}

impl WindowSpec {
    /// Checks Spark's constraints: positive size and slide, `slide <= size`, `0 <= start < slide`.
    pub fn new(size: i64, slide: i64, start: i64) -> Result<Self, String> {
        if size <= 0 {
            return Err("size must be positive".into());
        }
        if slide <= 0 {
            return Err("slide must be positive".into());
        }
        if slide > size {
            return Err("slide must not be longer than size".into());
        }
        if !(0..slide).contains(&start) {
            return Err("start must be at least 0s and shorter than slide".into());
        }
        Ok(Self { size, slide, start })
    }

    /// Tumbling windows of `size`.
    pub fn tumbling(size: i64) -> Self {
        Self {
            size,
            slide: size,
            start: 0,
        }
    }

    /// The start of the latest window containing `ts`, once every value that iterating its
    /// windows computes is known to fit in an i64: windows start in (ts - size, last start],
    /// end up to last start + size, and the iteration stops one slide below the first.
    fn last_start(&self, ts: i64) -> Result<i64, OutOfRange> {
        let out = OutOfRange(ts);
        // rem_euclid keeps negative timestamps right; slide > 0, so it cannot overflow.
        let offset = ts
            .checked_sub(self.start)
            .ok_or(out)?
            .rem_euclid(self.slide);
        let last_start = ts.checked_sub(offset).ok_or(out)?;
        last_start.checked_add(self.size).ok_or(out)?;
        ts.checked_sub(self.size)
            .and_then(|lowest| lowest.checked_sub(self.slide))
            .ok_or(out)?;
        Ok(last_start)
    }

    /// The windows containing `ts`, checked once: out of range when a window's bounds (or the
    /// arithmetic that finds them) would leave the i64 range.
    pub fn windows(&self, ts: i64) -> Result<WindowsOf, OutOfRange> {
        Ok(WindowsOf {
            last_start: self.last_start(ts)?,
            // last_start checked this and every value computed from it.
            lowest: ts - self.size,
            size: self.size,
            slide: self.slide,
        })
    }

    /// Calls `f` for every window containing `ts`, latest first; for none when `ts` is out of
    /// range ([`Self::windows`]).
    pub fn for_each_window(&self, ts: i64, f: impl FnMut(Window)) -> Result<(), OutOfRange> {
        self.windows(ts).map(|w| w.for_each(f))
    }

    /// Every window containing `ts`, latest first.
    pub fn windows_of(&self, ts: i64) -> Result<Vec<Window>, OutOfRange> {
        let mut out = Vec::with_capacity(self.windows_per_row());
        self.for_each_window(ts, |w| out.push(w))?;
        Ok(out)
    }

    /// How many windows each row falls into at most.
    pub fn windows_per_row(&self) -> usize {
        // size / slide rounded up, without the overflow of size + slide - 1.
        let windows = self.size / self.slide + i64::from(self.size % self.slide != 0);
        usize::try_from(windows).unwrap_or(1)
    }

    /// The end of the latest window containing `ts`: a row is late when even that one is closed.
    /// Out of range exactly when [`Self::for_each_window`] is.
    pub fn last_window_end(&self, ts: i64) -> Result<i64, OutOfRange> {
        self.windows(ts).map(|w| w.last_end())
    }

    /// The latest time at or before `t` at which a window ends (windows end at `start +
    /// size`, give or take whole slides): closing under a watermark takes nothing new when
    /// this is not past the watermark it last closed under.
    pub fn last_end_at_or_before(&self, t: i64) -> i64 {
        let (t, slide) = (i128::from(t), i128::from(self.slide));
        let phase = i128::from(self.start) + i128::from(self.size);
        i64::try_from(t - (t - phase).rem_euclid(slide)).unwrap_or(i64::MIN)
    }
}

/// The windows of one event time whose arithmetic [`WindowSpec::windows`] checked.
#[derive(Debug, Clone, Copy)]
pub struct WindowsOf {
    last_start: i64,
    /// Windows start above this.
    lowest: i64,
    size: i64,
    slide: i64,
}

impl WindowsOf {
    /// The end of the latest window: a row is late when even that one is closed.
    pub fn last_end(&self) -> i64 {
        self.last_start + self.size
    }

    /// Calls `f` for every window, latest first.
    pub fn for_each(&self, mut f: impl FnMut(Window)) {
        let mut start = self.last_start;
        while start > self.lowest {
            f(Window {
                start,
                end: start + self.size,
            });
            start -= self.slide;
        }
    }
}

/// Whether a window is closed under `watermark` (append mode emits it, rows for it are late).
pub fn is_closed(window_end: i64, watermark: Option<i64>) -> bool {
    watermark.is_some_and(|w| window_end <= w)
}

/// Spark's watermark rule: max event time minus the delay, never moving back.
pub fn next_watermark(
    current: Option<i64>,
    max_event_time: Option<i64>,
    delay: i64,
) -> Option<i64> {
    // A time so early that subtracting the delay underflows holds the watermark where it is.
    let candidate = max_event_time.and_then(|t| t.checked_sub(delay));
    match (current, candidate) {
        (Some(c), Some(n)) => Some(c.max(n)),
        (c, n) => c.or(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    /// The latest end at or before a time is a window's end, within a slide of the time, for
    /// tumbling, sliding and offset windows, before and after zero.
    #[test]
    fn the_latest_window_end_at_or_before_a_time_is_a_windows_end() {
        let specs = [
            WindowSpec::tumbling(300),
            WindowSpec::new(600, 200, 50).unwrap(),
            WindowSpec::new(5 * MIN, MIN, 7).unwrap(),
        ];
        assert_eq!(specs[0].last_end_at_or_before(299), 0);
        assert_eq!(specs[0].last_end_at_or_before(300), 300);
        assert_eq!(specs[0].last_end_at_or_before(-1), -300);
        assert_eq!(specs[1].last_end_at_or_before(449), 250);
        assert_eq!(specs[1].last_end_at_or_before(450), 450);
        for spec in specs {
            // Every boundary and its neighbours, and points between them: stepping through
            // every seventh microsecond of minutes-long windows took over a minute in debug.
            let step = (spec.slide / 64).max(1);
            let boundaries = (-3 * spec.size / spec.slide - 1..=3 * spec.size / spec.slide + 1)
                .map(|k| k * spec.slide + spec.start);
            let times = boundaries
                .flat_map(|b| [b - 1, b, b + 1])
                .chain((-3 * spec.size..3 * spec.size).step_by(step as usize));
            for t in times {
                let end = spec.last_end_at_or_before(t);
                assert!(end <= t && end > t - spec.slide, "{spec:?} {t}: {end}");
                let windows = spec.windows_of(end - 1).unwrap();
                assert!(windows.iter().any(|w| w.end == end), "{spec:?} {t}: {end}");
            }
        }
        assert_eq!(specs[0].last_end_at_or_before(i64::MIN), i64::MIN);
    }

    #[test]
    fn tumbling_start_inclusive_end_exclusive() {
        let spec = WindowSpec::tumbling(5 * MIN);
        assert_eq!(
            spec.windows_of(0).unwrap(),
            vec![Window {
                start: 0,
                end: 5 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(5 * MIN - 1).unwrap(),
            vec![Window {
                start: 0,
                end: 5 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(5 * MIN).unwrap(),
            vec![Window {
                start: 5 * MIN,
                end: 10 * MIN
            }]
        );
    }

    #[test]
    fn negative_timestamps_align_to_the_epoch() {
        let spec = WindowSpec::tumbling(5 * MIN);
        assert_eq!(
            spec.windows_of(-1).unwrap(),
            vec![Window {
                start: -5 * MIN,
                end: 0
            }]
        );
        assert_eq!(
            spec.windows_of(-5 * MIN).unwrap(),
            vec![Window {
                start: -5 * MIN,
                end: 0
            }]
        );
        assert_eq!(
            spec.windows_of(-5 * MIN - 1).unwrap(),
            vec![Window {
                start: -10 * MIN,
                end: -5 * MIN
            }]
        );
    }

    #[test]
    fn sliding_windows_cover_every_overlap() {
        let spec = WindowSpec::new(10 * MIN, 5 * MIN, 0).unwrap();
        assert_eq!(
            spec.windows_of(7 * MIN).unwrap(),
            vec![
                Window {
                    start: 5 * MIN,
                    end: 15 * MIN
                },
                Window {
                    start: 0,
                    end: 10 * MIN
                }
            ]
        );
        // On a boundary the row starts a window and is in the one before.
        assert_eq!(
            spec.windows_of(5 * MIN).unwrap(),
            vec![
                Window {
                    start: 5 * MIN,
                    end: 15 * MIN
                },
                Window {
                    start: 0,
                    end: 10 * MIN
                }
            ]
        );
        // Size not a multiple of slide: 3 windows of 10m every 4m hold some rows, 2 others.
        let odd = WindowSpec::new(10 * MIN, 4 * MIN, 0).unwrap();
        assert_eq!(odd.windows_per_row(), 3);
        for ts in [0, MIN, 3 * MIN, 9 * MIN, 11 * MIN, -7 * MIN] {
            let ws = odd.windows_of(ts).unwrap();
            assert!(!ws.is_empty() && ws.len() <= 3);
            for w in &ws {
                assert!(w.start <= ts && ts < w.end, "{w:?} must hold {ts}");
                assert_eq!(w.start.rem_euclid(4 * MIN), 0);
            }
        }
    }

    #[test]
    fn offset_windows_shift_by_start() {
        let spec = WindowSpec::new(5 * MIN, 5 * MIN, 2 * MIN).unwrap();
        assert_eq!(
            spec.windows_of(MIN).unwrap(),
            vec![Window {
                start: -3 * MIN,
                end: 2 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(2 * MIN).unwrap(),
            vec![Window {
                start: 2 * MIN,
                end: 7 * MIN
            }]
        );
        assert_eq!(spec.last_window_end(2 * MIN), Ok(7 * MIN));
    }

    #[test]
    fn spec_constraints() {
        assert!(WindowSpec::new(0, 1, 0).is_err());
        assert!(WindowSpec::new(5, 10, 0).is_err());
        assert!(WindowSpec::new(10, 5, 5).is_err());
        assert!(WindowSpec::new(10, 5, -1).is_err());
    }

    #[test]
    fn watermark_never_moves_back() {
        assert_eq!(next_watermark(None, None, 10), None);
        assert_eq!(next_watermark(None, Some(100), 10), Some(90));
        assert_eq!(next_watermark(Some(90), Some(50), 10), Some(90));
        assert_eq!(next_watermark(Some(90), None, 10), Some(90));
        assert_eq!(next_watermark(Some(90), Some(200), 10), Some(190));
        assert!(is_closed(90, Some(90)));
        assert!(!is_closed(91, Some(90)));
        assert!(!is_closed(i64::MIN, None));
    }

    /// The times at the edges of i64 and of the supported range, with windows of every shape
    /// (a size near i64::MAX among them): nothing panics, and what is not out of range gets
    /// exactly the windows that contain it.
    #[test]
    fn times_at_the_edges_are_out_of_range_or_windowed_exactly() {
        let times = [
            i64::MIN,
            i64::MIN + 1,
            MIN_EVENT_TIME - 1,
            MIN_EVENT_TIME,
            -1,
            0,
            MAX_EVENT_TIME,
            MAX_EVENT_TIME + 1,
            i64::MAX - 1,
            i64::MAX,
        ];
        let specs = [
            WindowSpec::tumbling(5 * MIN),
            WindowSpec::new(10 * MIN, 3 * MIN, 2 * MIN).unwrap(),
            WindowSpec::new(i64::MAX, i64::MAX, 0).unwrap(),
            WindowSpec::new(i64::MAX, i64::MAX / 2, 7).unwrap(),
            WindowSpec::new(1, 1, 0).unwrap(),
        ];
        for spec in specs {
            for ts in times {
                check_windows(&spec, ts);
                let in_range = check_event_time(ts).is_ok();
                assert_eq!(in_range, (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&ts));
            }
            for ts in [i64::MIN, i64::MAX] {
                if spec.size < i64::MAX {
                    assert_eq!(spec.windows_of(ts), Err(OutOfRange(ts)), "{spec:?}");
                }
            }
        }
        let reason = OutOfRange(i64::MAX).to_string();
        assert!(reason.starts_with("event time out of range"), "{reason}");
    }

    /// Whatever `for_each_window` answers for `ts` under `spec` is right: out of range only
    /// when some window of `ts` would leave i64, else every window holding `ts`, latest first,
    /// `slide` apart, never more than `windows_per_row`.
    fn check_windows(spec: &WindowSpec, ts: i64) {
        let mut calls = 0;
        let result = spec.for_each_window(ts, |_| calls += 1);
        let wide = |v: i64| i128::from(v);
        // The same windows computed without any risk of overflow.
        let last_start = wide(ts) - (wide(ts) - wide(spec.start)).rem_euclid(wide(spec.slide));
        let fits = |v: i128| i64::try_from(v).is_ok();
        let representable = fits(last_start + wide(spec.size))
            && fits(wide(ts) - wide(spec.size) - wide(spec.slide));
        match result {
            Err(e) => {
                assert_eq!(e, OutOfRange(ts));
                assert_eq!(calls, 0, "no window may be handed out before the error");
                assert!(!representable, "{spec:?} {ts}: refused but representable");
            }
            Ok(()) => {
                assert!(
                    representable,
                    "{spec:?} {ts}: accepted but not representable"
                );
                let windows = spec.windows_of(ts).unwrap();
                assert!(!windows.is_empty() && windows.len() <= spec.windows_per_row());
                let mut expected = last_start;
                for w in &windows {
                    assert_eq!(wide(w.start), expected);
                    assert_eq!(wide(w.end), expected + wide(spec.size));
                    assert!(w.start <= ts && ts < w.end, "{w:?} must hold {ts}");
                    expected -= wide(spec.slide);
                }
                // The next one down would not hold ts.
                assert!(expected + wide(spec.size) <= wide(ts));
                assert_eq!(
                    spec.last_window_end(ts).map(wide),
                    Ok(last_start + wide(spec.size))
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::fuzzing::config(2_000))]

        /// Any time under any valid spec: windows are exact or the time is out of range.
        #[test]
        fn any_time_gets_exact_windows_or_is_out_of_range(
            ts in proptest::num::i64::ANY,
            size in 1i64..=i64::MAX,
            slide_fraction in 0.0f64..=1.0,
            start_fraction in 0.0f64..1.0,
        ) {
            let slide = ((size as f64 * slide_fraction) as i64).clamp(1, size);
            // Keep rows to a few windows each: a tiny slide is a job's choice, not data's.
            let slide = slide.max(size / 64).max(1);
            let start = ((slide as f64 * start_fraction) as i64).clamp(0, slide - 1);
            let spec = WindowSpec::new(size, slide, start).unwrap();
            check_windows(&spec, ts);
        }

        /// The watermark never moves back and never wraps, whatever the times and delay.
        #[test]
        fn watermark_arithmetic_is_checked(
            current in proptest::option::of(proptest::num::i64::ANY),
            max in proptest::option::of(proptest::num::i64::ANY),
            delay in 0i64..=i64::MAX,
        ) {
            let next = next_watermark(current, max, delay);
            if let (Some(c), Some(n)) = (current, next) {
                proptest::prop_assert!(n >= c);
            }
            if let (Some(n), Some(m)) = (next, max) {
                proptest::prop_assert!(n <= m || Some(n) == current);
            }
        }
    }
}
