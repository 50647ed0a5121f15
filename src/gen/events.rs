//! The events `weir gen` makes: the reference schema's web events, with late, malformed and
//! hostile records mixed in at the fractions asked, deterministic for a seed and start time.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::GenArgs;

/// What a generated record is meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    Late,
    Malformed,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Late => "late",
            Kind::Malformed => "malformed",
        }
    }
}

/// One generated record.
pub struct Generated {
    pub partition: i32,
    pub kind: Kind,
    pub key: String,
    /// The record's bytes: JSON text, except for hostile records that are not UTF-8.
    pub value: Vec<u8>,
}

/// The deterministic event source behind `weir gen`.
pub struct EventGenerator {
    args: GenArgs,
    rng: ChaCha8Rng,
    start_micros: i64,
    type_weights: Vec<f64>,
    index: u64,
    time_text: TimeText,
}

/// A time's RFC 3339 text as [`EventGenerator::timestamp`] writes it, with the date written
/// once a day: chrono's formatting of every event's time was a tenth of a producer's CPU.
#[derive(Default)]
struct TimeText {
    /// The day (since 1970) whose date `date` holds, up to and with its `T`.
    day: Option<i64>,
    date: String,
}

impl TimeText {
    fn format(&mut self, micros: i64) -> String {
        let in_range = DateTime::<Utc>::MIN_UTC.timestamp_micros()
            ..=DateTime::<Utc>::MAX_UTC.timestamp_micros();
        if !in_range.contains(&micros) {
            return EventGenerator::timestamp(micros);
        }
        let seconds = micros.div_euclid(1_000_000);
        let day = seconds.div_euclid(86_400);
        if self.day != Some(day) {
            let midnight = EventGenerator::timestamp(micros - micros.rem_euclid(86_400_000_000));
            let date_end = midnight.find('T').map_or(midnight.len(), |t| t + 1);
            self.date = midnight[..date_end].to_string();
            self.day = Some(day);
        }
        let of_day = seconds.rem_euclid(86_400);
        let mut text = String::with_capacity(self.date.len() + 16);
        text.push_str(&self.date);
        // `v` has at most `width` digits here; written zero-padded, most significant first.
        let digits = |text: &mut String, v: i64, width: u32| {
            text.extend(
                (0..width)
                    .rev()
                    .map(|i| char::from(b'0' + (v / 10i64.pow(i) % 10) as u8)),
            );
        };
        digits(&mut text, of_day / 3600, 2);
        text.push(':');
        digits(&mut text, of_day / 60 % 60, 2);
        text.push(':');
        digits(&mut text, of_day % 60, 2);
        text.push('.');
        digits(&mut text, micros.rem_euclid(1_000_000), 6);
        text.push('Z');
        text
    }
}

const MALFORMED_KINDS: usize = 7;
/// Hostile records ([`EventGenerator::hostile`]); the last ones are late, not malformed.
const HOSTILE_KINDS: usize = 13;
const HOSTILE_LATE_KINDS: usize = 2;
const BROWSERS: [&str; 4] = ["chrome", "firefox", "safari", "edge"];
const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "BR", "IN", "JP"];

impl EventGenerator {
    pub fn new(args: GenArgs) -> anyhow::Result<Self> {
        if args.event_types.is_empty() || args.event_types.iter().any(|t| t.is_empty()) {
            bail!("--event-types needs at least one non-empty name");
        }
        if args.users == 0 || args.partitions <= 0 {
            bail!("--users and --partitions must be positive");
        }
        let fractions = [
            args.late_fraction,
            args.malformed_fraction,
            args.hostile_fraction,
        ];
        if fractions.iter().any(|f| !(0.0..=1.0).contains(f)) || fractions.iter().sum::<f64>() > 1.0
        {
            bail!(
                "--late-fraction, --malformed-fraction and --hostile-fraction must be in [0, 1] \
                 and sum to at most 1"
            );
        }
        let span = i64::try_from(args.span.as_micros()).context("--span too long")?;
        let start_micros = match args.start {
            Some(t) => t.timestamp_micros(),
            None => Utc::now().timestamp_micros() - span,
        };
        let type_weights: Vec<f64> = (0..args.event_types.len())
            .map(|i| 1.0 / ((i + 1) as f64).powf(args.skew))
            .collect();
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            start_micros,
            type_weights,
            index: 0,
            time_text: TimeText::default(),
            args,
        })
    }

    /// The index of an event type, drawn by the types' weights.
    fn pick_type(&mut self) -> usize {
        let total: f64 = self.type_weights.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, w) in self.type_weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        self.args.event_types.len() - 1
    }

    fn timestamp(micros: i64) -> String {
        DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn micros(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
    }
}

impl Iterator for EventGenerator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.index >= self.args.count {
            return None;
        }
        let i = self.index;
        self.index += 1;
        let span = Self::micros(self.args.span);
        let stream_time = self.start_micros
            + (i128::from(span) * i128::from(i) / i128::from(self.args.count.max(1))) as i64;
        let jitter =
            (self.rng.random::<f64>() * Self::micros(self.args.out_of_order) as f64) as i64;
        let late_by = Self::micros(self.args.late_by);
        let roll = self.rng.random::<f64>();
        // A late event needs a stream old enough for the watermark to have passed it.
        let can_be_late = stream_time - self.start_micros >= 2 * late_by;
        let hostile_from = self.args.malformed_fraction + self.args.late_fraction;
        let kind = if roll < self.args.malformed_fraction {
            Kind::Malformed
        } else if roll < hostile_from && can_be_late {
            Kind::Late
        } else if roll >= hostile_from && roll < hostile_from + self.args.hostile_fraction {
            return Some(self.hostile(i, stream_time, can_be_late));
        } else {
            Kind::Valid
        };
        let event_time = match kind {
            Kind::Late => stream_time - late_by - jitter,
            _ => stream_time - jitter,
        };
        let mut user = String::with_capacity(16);
        user.push_str("user-");
        user.push_str(itoa::Buffer::new().format(self.rng.random_range(0..self.args.users)));
        let type_index = self.pick_type();
        let id = self.rng.random::<u128>();
        let page = self.rng.random_range(0..500);
        let browser = BROWSERS[self.rng.random_range(0..BROWSERS.len())];
        let country = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())];
        let ts = self.time_text.format(event_time);
        let malformed = match kind {
            Kind::Malformed => Some(self.rng.random_range(0..MALFORMED_KINDS)),
            _ => None,
        };
        let event_type = self.args.event_types[type_index].as_str();
        let value: Vec<u8> = match malformed {
            Some(pick) => {
                let event_id = format!("{id:032x}");
                match pick {
                    0 => format!("{{\"event_id\": \"{event_id}\", \"user_id\": \"{user}\", \"event_ty"),
                    1 => json!({"event_id": event_id, "user_id": 12345, "event_type": event_type, "timestamp": ts}).to_string(),
                    2 => json!({"event_id": event_id, "user_id": user, "timestamp": ts}).to_string(),
                    3 => json!({"event_id": event_id, "user_id": null, "event_type": event_type, "timestamp": ts}).to_string(),
                    4 => json!({"event_id": event_id, "user_id": user, "event_type": event_type, "timestamp": "last tuesday"}).to_string(),
                    5 => String::new(),
                    _ => format!("[\"{event_id}\", \"{user}\"]"),
                }
                .into_bytes()
            }
            None => event_json(&EventFields {
                id,
                event_type,
                page,
                browser,
                country,
                timestamp: &ts,
                user: &user,
            }),
        };
        Some(Generated {
            partition: self.partition_of(i),
            kind,
            key: user,
            value,
        })
    }
}

impl EventGenerator {
    fn partition_of(&self, i: u64) -> i32 {
        (i % self.args.partitions as u64) as i32
    }

    /// Record `i` as a hostile one: well-formed apart from one field a producer got wrong in
    /// a way a stream engine must survive. A long-past time is late when the watermark has
    /// passed it (`can_be_late`), else another kind is made.
    fn hostile(&mut self, i: u64, stream_time: i64, can_be_late: bool) -> Generated {
        let kinds = if can_be_late {
            HOSTILE_KINDS
        } else {
            HOSTILE_KINDS - HOSTILE_LATE_KINDS
        };
        let pick = self.rng.random_range(0..kinds);
        let event_id = format!("{:032x}", self.rng.random::<u128>());
        let user = format!("user-{}", self.rng.random_range(0..self.args.users));
        let type_index = self.pick_type();
        let event_type = self.args.event_types[type_index].clone();
        let ts = Self::timestamp(stream_time);
        // The event with its timestamp (JSON text) and a field more.
        let event = |timestamp: &str, extra: &str| -> String {
            format!(
                r#"{{"event_id":"{event_id}","user_id":"{user}","event_type":"{event_type}","timestamp":{timestamp}{extra}}}"#
            )
        };
        let quoted = |t: &str| format!("\"{t}\"");
        let value: Vec<u8> = match pick {
            // Times a timestamp cannot hold, as numbers (microseconds) and as text.
            0 => event("9223372036854775807", "").into(),
            1 => event("-9223372036854775808", "").into(),
            2 => event("253402300800000000", "").into(),
            3 => event("-9223372036854775809", "").into(),
            4 => event("1e300", "").into(),
            5 => event(&quoted("+275760-09-13T00:00:00Z"), "").into(),
            // Valid, but far further ahead than max_event_time_ahead.
            6 => event(&quoted("9999-12-31T23:59:59.999999Z"), "").into(),
            // A number where a string belongs, past what f64 holds.
            7 => format!(
                r#"{{"event_id":"{event_id}","user_id":1e400,"event_type":"{event_type}","timestamp":"{ts}"}}"#
            )
            .into(),
            // Bytes that are not UTF-8 inside a string.
            8 => {
                let mut v = format!(r#"{{"event_id":"{event_id}","user_id":""#).into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, 0xc3]);
                v.extend_from_slice(
                    format!(r#"","event_type":"{event_type}","timestamp":"{ts}"}}"#).as_bytes(),
                );
                v
            }
            // Nesting 10 000 deep where a map of strings belongs.
            9 => {
                let depth = 10_000;
                let nested = format!(r#"{{"k":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
                event(&quoted(&ts), &format!(r#","properties":{nested}"#)).into()
            }
            // Just over max_record_bytes.
            10 => {
                let pad = "x".repeat(self.args.max_record_bytes + 1);
                event(&quoted(&ts), &format!(r#","page_url":"{pad}""#)).into()
            }
            // In range and well formed, but long past: late once a watermark exists.
            11 => event(&quoted("0001-01-01T00:00:00Z"), "").into(),
            _ => event(&quoted("1970-01-01T00:00:00Z"), "").into(),
        };
        Generated {
            partition: self.partition_of(i),
            kind: if pick >= HOSTILE_KINDS - HOSTILE_LATE_KINDS {
                Kind::Late
            } else {
                Kind::Malformed
            },
            key: user,
            value,
        }
    }
}

/// The fields of a valid event.
struct EventFields<'a> {
    id: u128,
    event_type: &'a str,
    page: i32,
    browser: &'a str,
    country: &'a str,
    timestamp: &'a str,
    user: &'a str,
}

/// The JSON text of a valid event, written straight into one buffer with its keys in the order
/// serde_json's map writes them (sorted), so the bytes are what `json!` made: building a map per
/// event cost most of a producer's time.
fn event_json(e: &EventFields) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"event_id":""#);
    out.extend(
        (0..32)
            .rev()
            .map(|i| HEX[((e.id >> (4 * i)) & 0xf) as usize]),
    );
    out.extend_from_slice(br#"","event_type":"#);
    // Writing into a Vec cannot fail; the generator's own strings need no escaping, an event
    // type given on the command line may.
    let _ = serde_json::to_writer(&mut out, e.event_type);
    out.extend_from_slice(br#","page_url":"https://shop.example.com/p/"#);
    out.extend_from_slice(itoa::Buffer::new().format(e.page).as_bytes());
    for (name, value) in [
        (r#"","properties":{"browser":""#, e.browser),
        (r#"","country":""#, e.country),
        (r#""},"timestamp":""#, e.timestamp),
        (r#"","user_id":""#, e.user),
    ] {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(br#""}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> GenArgs {
        let mut argv = vec![
            "--count",
            "5000",
            "--start",
            "2026-01-01T00:00:00Z",
            "--span",
            "4h",
        ];
        argv.extend_from_slice(extra);
        let argv: Vec<String> = argv.into_iter().map(String::from).collect();
        GenArgs::from_argv(&argv).unwrap()
    }

    #[test]
    fn an_events_text_is_what_a_json_map_of_its_fields_writes() {
        for (id, event_type, page) in [
            (0, "click", 0),
            (u128::MAX, "page_view", 499),
            (0x1234_5678, "a \"quoted\" type\\ with é and \u{1}", 42),
        ] {
            let fields = EventFields {
                id,
                event_type,
                page,
                browser: "firefox",
                country: "DE",
                timestamp: "2026-01-01T00:00:00.000001Z",
                user: "user-17",
            };
            let expected = json!({
                "event_id": format!("{id:032x}"),
                "user_id": "user-17",
                "event_type": event_type,
                "page_url": format!("https://shop.example.com/p/{page}"),
                "timestamp": "2026-01-01T00:00:00.000001Z",
                "properties": {"browser": "firefox", "country": "DE"},
            })
            .to_string();
            assert_eq!(String::from_utf8(event_json(&fields)).unwrap(), expected);
        }
    }

    #[test]
    fn a_times_text_is_what_chrono_writes() {
        let mut text = TimeText::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let min = DateTime::<Utc>::MIN_UTC.timestamp_micros();
        let max = DateTime::<Utc>::MAX_UTC.timestamp_micros();
        let day = 86_400_000_000i64;
        let mut times = vec![0, -1, 1, day - 1, day, -day, min, max, min - 1, max + 1];
        times.extend(i64::MIN..=i64::MIN + 1);
        times.extend((0..20_000).map(|_| rng.random_range(min..=max)));
        // Runs of times within a day, and across midnight, as a stream's are.
        let now = 1_796_000_000_000_000i64;
        times.extend((0..20_000).map(|i| now + i * 7_777_777 - rng.random_range(0..120_000_000)));
        for t in times {
            assert_eq!(text.format(t), EventGenerator::timestamp(t), "{t}");
        }
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<Vec<u8>> = EventGenerator::new(args(&[]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        let b: Vec<Vec<u8>> = EventGenerator::new(args(&[]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        let c: Vec<Vec<u8>> = EventGenerator::new(args(&["--seed", "43"]))
            .unwrap()
            .map(|e| e.value)
            .collect();
        assert_eq!(a.len(), 5000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fractions_kinds_and_partitions() {
        let events: Vec<Generated> = EventGenerator::new(args(&[
            "--late-fraction",
            "0.1",
            "--malformed-fraction",
            "0.05",
            "--partitions",
            "3",
        ]))
        .unwrap()
        .collect();
        let count = |k: Kind| events.iter().filter(|e| e.kind == k).count();
        // Late events only start once the stream is two late_by (1h) old: half of a 4h span.
        assert!(
            (150..350).contains(&count(Kind::Late)),
            "{}",
            count(Kind::Late)
        );
        assert!(
            (150..350).contains(&count(Kind::Malformed)),
            "{}",
            count(Kind::Malformed)
        );
        assert!(events[..2500].iter().all(|e| e.kind != Kind::Late));
        for kind in [Kind::Valid, Kind::Late] {
            for e in events.iter().filter(|e| e.kind == kind) {
                let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
                assert!(v["event_id"].is_string() && v["timestamp"].is_string());
            }
        }
        assert_eq!(events.iter().filter(|e| e.partition == 2).count(), 1666);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(EventGenerator::new(args(&[
            "--late-fraction",
            "0.7",
            "--malformed-fraction",
            "0.6"
        ]))
        .is_err());
        assert!(EventGenerator::new(args(&["--users", "0"])).is_err());
    }
}
