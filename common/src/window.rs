//! Event-time windows with Spark's rules: `window(ts, size, slide, start)`, start inclusive,
//! end exclusive, aligned to the Unix epoch plus `start`.

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

    /// Calls `f` for every window containing `ts`, latest first.
    pub fn for_each_window(&self, ts: i64, mut f: impl FnMut(Window)) {
        // The latest window start at or before ts; rem_euclid keeps negative timestamps right.
        let last_start = ts - (ts - self.start).rem_euclid(self.slide);
        let mut start = last_start;
        while start > ts.saturating_sub(self.size) {
            f(Window {
                start,
                end: start.saturating_add(self.size),
            });
            start -= self.slide;
        }
    }

    /// Every window containing `ts`, latest first.
    pub fn windows_of(&self, ts: i64) -> Vec<Window> {
        let mut out = Vec::with_capacity(self.windows_per_row());
        self.for_each_window(ts, |w| out.push(w));
        out
    }

    /// How many windows each row falls into.
    pub fn windows_per_row(&self) -> usize {
        usize::try_from((self.size + self.slide - 1) / self.slide).unwrap_or(1)
    }

    /// The end of the latest window containing `ts`: a row is late when even that one is closed.
    pub fn last_window_end(&self, ts: i64) -> i64 {
        let last_start = ts - (ts - self.start).rem_euclid(self.slide);
        last_start.saturating_add(self.size)
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
    let candidate = max_event_time.map(|t| t.saturating_sub(delay));
    match (current, candidate) {
        (Some(c), Some(n)) => Some(c.max(n)),
        (c, n) => c.or(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn tumbling_start_inclusive_end_exclusive() {
        let spec = WindowSpec::tumbling(5 * MIN);
        assert_eq!(
            spec.windows_of(0),
            vec![Window {
                start: 0,
                end: 5 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(5 * MIN - 1),
            vec![Window {
                start: 0,
                end: 5 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(5 * MIN),
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
            spec.windows_of(-1),
            vec![Window {
                start: -5 * MIN,
                end: 0
            }]
        );
        assert_eq!(
            spec.windows_of(-5 * MIN),
            vec![Window {
                start: -5 * MIN,
                end: 0
            }]
        );
        assert_eq!(
            spec.windows_of(-5 * MIN - 1),
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
            spec.windows_of(7 * MIN),
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
            spec.windows_of(5 * MIN),
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
            let ws = odd.windows_of(ts);
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
            spec.windows_of(MIN),
            vec![Window {
                start: -3 * MIN,
                end: 2 * MIN
            }]
        );
        assert_eq!(
            spec.windows_of(2 * MIN),
            vec![Window {
                start: 2 * MIN,
                end: 7 * MIN
            }]
        );
        assert_eq!(spec.last_window_end(2 * MIN), 7 * MIN);
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
}
