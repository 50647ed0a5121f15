//! Aggregate functions, their mergeable partial states, and their output columns.
//!
//! `count(distinct x)` keeps its values outside the group's partial (see `weir-executor`'s state
//! layout): the partial only carries the count that shards report at emission.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Schema};
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

use crate::data::value::Scalar;
use crate::query::keygroup::StableBuildHasher;

/// Spark's default relative standard deviation for `approx_count_distinct`.
pub const DEFAULT_RSD: f64 = 0.05;

/// Which function an aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggKind {
    CountStar,
    Count,
    CountDistinct,
    /// HyperLogLog++ with `precision` index bits; `rsd` is what the user asked for.
    ApproxCountDistinct {
        precision: u8,
        rsd: f64,
    },
    Sum,
    Min,
    Max,
    Avg,
}

/// One output column of the query: `name: function(column)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    pub name: String,
    pub kind: AggKind,
    /// The input column (none for `count(*)`).
    pub column: Option<String>,
    /// The input column's type.
    pub input_type: Option<DataType>,
}

/// Spark's precision for a relative standard deviation: `ceil(2 * log2(1.106 / rsd))`.
pub fn hll_precision(rsd: f64) -> u8 {
    let p = (2.0 * (1.106 / rsd).log2()).ceil();
    p.clamp(4.0, 18.0) as u8
}

/// Parses `count(*)`, `count(x)`, `count(distinct x)`, `approx_count_distinct(x[, rsd])`,
/// `sum(x)`, `min(x)`, `max(x)` and `avg(x)` against the input schema.
pub fn parse_aggregate(name: &str, expr: &str, schema: &Schema) -> Result<AggregateSpec, String> {
    let expected = "expected count(*), count(col), count(distinct col), \
                    approx_count_distinct(col[, rsd]), sum(col), min(col), max(col) or avg(col)";
    let text = expr.trim();
    let open = text
        .find('(')
        .filter(|_| text.ends_with(')'))
        .ok_or_else(|| format!("`{text}`: {expected}"))?;
    let func = text[..open].trim().to_ascii_lowercase();
    let args = text[open + 1..text.len() - 1].trim();
    let column_of = |arg: &str| -> Result<(String, DataType), String> {
        let col = arg.trim().trim_matches('`');
        schema
            .field_with_name(col)
            .map(|f| (col.to_string(), f.data_type().clone()))
            .map_err(|_| format!("`{text}`: column `{col}` is not in source.schema"))
    };
    let spec = |kind, col: Option<(String, DataType)>| AggregateSpec {
        name: name.to_string(),
        kind,
        column: col.as_ref().map(|c| c.0.clone()),
        input_type: col.map(|c| c.1),
    };
    match func.as_str() {
        "count" if args == "*" || args == "1" => Ok(spec(AggKind::CountStar, None)),
        "count" => {
            let lowered = args.to_ascii_lowercase();
            if let Some(rest) = lowered.strip_prefix("distinct ") {
                let col = column_of(&args[args.len() - rest.len()..])?;
                if !crate::data::schema::is_scalar(&col.1) {
                    return Err(format!(
                        "`{text}`: cannot count distinct values of type {}",
                        col.1
                    ));
                }
                Ok(spec(AggKind::CountDistinct, Some(col)))
            } else {
                Ok(spec(AggKind::Count, Some(column_of(args)?)))
            }
        }
        "approx_count_distinct" => {
            let (col, rsd) = match args.split_once(',') {
                Some((c, r)) => {
                    let rsd: f64 = r.trim().parse().map_err(|_| {
                        format!("`{text}`: relative error `{}` is not a number", r.trim())
                    })?;
                    if !(rsd > 0.0 && rsd < 1.0) {
                        return Err(format!("`{text}`: relative error must be between 0 and 1"));
                    }
                    (c, rsd)
                }
                None => (args, DEFAULT_RSD),
            };
            let col = column_of(col)?;
            if !crate::data::schema::is_scalar(&col.1) {
                return Err(format!(
                    "`{text}`: cannot count distinct values of type {}",
                    col.1
                ));
            }
            let precision = hll_precision(rsd);
            Ok(spec(
                AggKind::ApproxCountDistinct { precision, rsd },
                Some(col),
            ))
        }
        "sum" | "min" | "max" | "avg" | "mean" => {
            let col = column_of(args)?;
            if !crate::data::schema::is_numeric(&col.1) {
                return Err(format!(
                    "`{text}`: {func} needs a numeric column (int, long, double), `{}` is {}",
                    col.0, col.1
                ));
            }
            let kind = match func.as_str() {
                "sum" => AggKind::Sum,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                _ => AggKind::Avg,
            };
            Ok(spec(kind, Some(col)))
        }
        _ => Err(format!("`{text}`: unknown function `{func}`; {expected}")),
    }
}

impl AggregateSpec {
    /// The Arrow type of the output column (Spark's: counts are `long`, `avg` is `double`).
    pub fn output_type(&self) -> DataType {
        match self.kind {
            AggKind::CountStar
            | AggKind::Count
            | AggKind::CountDistinct
            | AggKind::ApproxCountDistinct { .. } => DataType::Int64,
            AggKind::Avg => DataType::Float64,
            AggKind::Sum => match self.input_type {
                Some(DataType::Float64) => DataType::Float64,
                _ => DataType::Int64,
            },
            AggKind::Min | AggKind::Max => self.input_type.clone().unwrap_or(DataType::Int64),
        }
    }

    /// Whether the output column can be null (`sum`, `min`, `max`, `avg` of no values).
    pub fn output_nullable(&self) -> bool {
        matches!(
            self.kind,
            AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Avg
        )
    }

    /// The empty partial state of this aggregate.
    pub fn new_partial(&self) -> Partial {
        let float = matches!(self.input_type, Some(DataType::Float64));
        match self.kind {
            AggKind::CountStar | AggKind::Count => Partial::Count(0),
            AggKind::CountDistinct => Partial::Distinct(0),
            AggKind::ApproxCountDistinct { precision, .. } => {
                // The precision was checked at parse time (4..=18), so this cannot fail.
                match HyperLogLogPlus::new(precision, StableBuildHasher) {
                    Ok(h) => Partial::Hll(Box::new(h)),
                    Err(_) => Partial::Count(0),
                }
            }
            AggKind::Sum if float => Partial::SumF(None),
            AggKind::Sum => Partial::SumI(None),
            AggKind::Min if float => Partial::MinF(None),
            AggKind::Min => Partial::MinI(None),
            AggKind::Max if float => Partial::MaxF(None),
            AggKind::Max => Partial::MaxI(None),
            AggKind::Avg => Partial::Avg { sum: 0.0, count: 0 },
        }
    }
}

/// The HyperLogLog++ sketch of `approx_count_distinct`.
pub type Sketch = HyperLogLogPlus<Vec<u8>, StableBuildHasher>;

/// A mergeable partial state of one aggregate for one (window, group).
///
/// Variants are only ever added at the end: states are kept in RocksDB and snapshots by index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Partial {
    Count(i64),
    /// Exact distinct count, summed from shard counts at emission.
    Distinct(i64),
    Hll(Box<Sketch>),
    SumI(Option<i64>),
    SumF(Option<f64>),
    MinI(Option<i64>),
    MaxI(Option<i64>),
    MinF(Option<f64>),
    MaxF(Option<f64>),
    Avg {
        sum: f64,
        count: i64,
    },
    /// An integer sum that left the i64 range: null in the output (Spark's `try_sum`), since
    /// a wrapped sum would be wrong in silence and failing the epoch would fail every re-run.
    SumIOverflow,
}

/// Why two partial states cannot be merged: they came from a peer or a store that does not
/// hold this query's states, or a count left the i64 range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("mismatched partial states: {ours} and {theirs}")]
    Mismatch {
        ours: &'static str,
        theirs: &'static str,
    },
    #[error("{0} overflows a 64-bit count")]
    Overflow(&'static str),
    #[error("cannot merge HyperLogLog sketches: {0}")]
    Sketch(String),
    #[error("a group row of {ours} partial states met one of {theirs}")]
    Arity { ours: usize, theirs: usize },
}

/// Merges the partial states of one group row into another's, aggregate by aggregate.
pub fn merge_all(into: &mut [Partial], other: &[Partial]) -> Result<(), MergeError> {
    if into.len() != other.len() {
        return Err(MergeError::Arity {
            ours: into.len(),
            theirs: other.len(),
        });
    }
    for (a, b) in into.iter_mut().zip(other) {
        a.merge(b)?;
    }
    Ok(())
}

fn merge_opt<T: Copy>(a: Option<T>, b: Option<T>, f: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, y) => x.or(y),
    }
}

/// An integer sum with `v` added, or [`Partial::SumIOverflow`].
fn add_to_sum(sum: Option<i64>, v: i64) -> Partial {
    match sum.unwrap_or(0).checked_add(v) {
        Some(total) => Partial::SumI(Some(total)),
        None => Partial::SumIOverflow,
    }
}

fn checked_count(a: i64, b: i64, what: &'static str) -> Result<i64, MergeError> {
    a.checked_add(b).ok_or(MergeError::Overflow(what))
}

impl Partial {
    /// The variant's name, for errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Partial::Count(_) => "count",
            Partial::Distinct(_) => "distinct count",
            Partial::Hll(_) => "HyperLogLog sketch",
            Partial::SumI(_) | Partial::SumIOverflow => "integer sum",
            Partial::SumF(_) => "float sum",
            Partial::MinI(_) => "integer min",
            Partial::MaxI(_) => "integer max",
            Partial::MinF(_) => "float min",
            Partial::MaxF(_) => "float max",
            Partial::Avg { .. } => "average",
        }
    }

    /// This state, when it is one of `spec`'s (the kind [`AggregateSpec::new_partial`] makes,
    /// counts not negative): what a peer sends passes here before any merge. A sketch is
    /// rebuilt by merging it into an empty one of `spec`'s precision, with a panic caught: its
    /// fields came off the wire, and the sketch library indexes and unwraps by them. What is
    /// kept is then a sketch this process built, with the same registers.
    pub fn admitted(self, spec: &AggregateSpec) -> Option<Partial> {
        let mut empty = spec.new_partial();
        let fits = match (&self, &mut empty) {
            (Partial::Hll(theirs), Partial::Hll(ours)) => {
                let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ours.merge(theirs).is_ok()
                }));
                return matches!(merged, Ok(true)).then_some(empty);
            }
            (Partial::SumIOverflow, Partial::SumI(_)) => true,
            (Partial::Count(n), Partial::Count(_))
            | (Partial::Distinct(n), Partial::Distinct(_)) => *n >= 0,
            (Partial::Avg { count, .. }, Partial::Avg { .. }) => *count >= 0,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(&*b),
        };
        fits.then_some(self)
    }

    /// Folds one input value in (`Scalar::Null` for `count(*)` counts too).
    pub fn update(&mut self, kind: AggKind, value: Scalar<'_>) {
        if value.is_null() && kind != AggKind::CountStar {
            return;
        }
        match self {
            // One row at a time cannot reach i64::MAX; saturating keeps even that exact.
            Partial::Count(c) => *c = c.saturating_add(1),
            // Distinct values are kept in their own shards; nothing to do per row here.
            Partial::Distinct(_) | Partial::SumIOverflow => {}
            Partial::Hll(h) => value.with_bytes(|b| h.insert(b)),
            Partial::SumI(s) => {
                if let Some(v) = value.as_i64() {
                    *self = add_to_sum(*s, v);
                }
            }
            Partial::SumF(s) => {
                if let Some(v) = value.as_f64() {
                    *s = Some(s.unwrap_or(0.0) + v);
                }
            }
            Partial::MinI(m) => *m = merge_opt(*m, value.as_i64(), i64::min),
            Partial::MaxI(m) => *m = merge_opt(*m, value.as_i64(), i64::max),
            Partial::MinF(m) => *m = merge_opt(*m, value.as_f64(), f64::min),
            Partial::MaxF(m) => *m = merge_opt(*m, value.as_f64(), f64::max),
            Partial::Avg { sum, count } => {
                if let Some(v) = value.as_f64() {
                    *sum += v;
                    *count = count.saturating_add(1);
                }
            }
        }
    }

    /// Merges another partial of the same aggregate into this one.
    pub fn merge(&mut self, other: &Partial) -> Result<(), MergeError> {
        match (&mut *self, other) {
            (Partial::Count(a), Partial::Count(b)) => *a = checked_count(*a, *b, "count")?,
            (Partial::Distinct(a), Partial::Distinct(b)) => {
                *a = checked_count(*a, *b, "distinct count")?
            }
            (Partial::Hll(a), Partial::Hll(b)) => {
                a.merge(b).map_err(|e| MergeError::Sketch(e.to_string()))?
            }
            (Partial::SumI(a), Partial::SumI(b)) => match (*a, *b) {
                (Some(x), Some(y)) => *self = add_to_sum(Some(x), y),
                (x, y) => *a = x.or(y),
            },
            (Partial::SumI(_) | Partial::SumIOverflow, Partial::SumIOverflow) => {
                *self = Partial::SumIOverflow
            }
            (Partial::SumIOverflow, Partial::SumI(_)) => {}
            (Partial::SumF(a), Partial::SumF(b)) => *a = merge_opt(*a, *b, |x, y| x + y),
            (Partial::MinI(a), Partial::MinI(b)) => *a = merge_opt(*a, *b, i64::min),
            (Partial::MaxI(a), Partial::MaxI(b)) => *a = merge_opt(*a, *b, i64::max),
            (Partial::MinF(a), Partial::MinF(b)) => *a = merge_opt(*a, *b, f64::min),
            (Partial::MaxF(a), Partial::MaxF(b)) => *a = merge_opt(*a, *b, f64::max),
            (Partial::Avg { sum, count }, Partial::Avg { sum: s, count: c }) => {
                *count = checked_count(*count, *c, "average's count")?;
                *sum += s;
            }
            (a, b) => {
                return Err(MergeError::Mismatch {
                    ours: a.kind_name(),
                    theirs: b.kind_name(),
                })
            }
        }
        Ok(())
    }

    /// Adds an exact distinct count reported by a shard.
    pub fn add_distinct(&mut self, n: i64) -> Result<(), MergeError> {
        match self {
            Partial::Distinct(c) => *c = checked_count(*c, n, "distinct count")?,
            other => {
                return Err(MergeError::Mismatch {
                    ours: other.kind_name(),
                    theirs: "distinct count",
                })
            }
        }
        Ok(())
    }

    /// The final value as an integer (counts, integer sums, min and max).
    fn final_i64(&mut self) -> Option<i64> {
        match self {
            Partial::Count(c) | Partial::Distinct(c) => Some(*c),
            Partial::Hll(h) => Some(h.count().round() as i64),
            Partial::SumI(v) | Partial::MinI(v) | Partial::MaxI(v) => *v,
            Partial::SumIOverflow => None,
            _ => None,
        }
    }

    /// The final value as a float (float sums, min, max and averages).
    fn final_f64(&self) -> Option<f64> {
        match self {
            Partial::SumF(v) | Partial::MinF(v) | Partial::MaxF(v) => *v,
            Partial::Avg { sum, count } if *count > 0 => Some(sum / *count as f64),
            _ => None,
        }
    }
}

/// Encodes a group's partial states for the state store (postcard: compact and stable).
pub fn encode_partials(partials: &[Partial]) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(partials)
}

/// Decodes [`encode_partials`] output.
pub fn decode_partials(bytes: &[u8]) -> Result<Vec<Partial>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Builds an aggregate's output column from the final partials of the emitted rows.
pub fn output_column(spec: &AggregateSpec, partials: &mut [&mut Partial]) -> ArrayRef {
    match spec.output_type() {
        DataType::Float64 => Arc::new(
            partials
                .iter()
                .map(|p| p.final_f64())
                .collect::<Float64Array>(),
        ),
        DataType::Int32 => Arc::new(
            partials
                .iter_mut()
                .map(|p| p.final_i64().and_then(|v| i32::try_from(v).ok()))
                .collect::<Int32Array>(),
        ),
        _ => Arc::new(
            partials
                .iter_mut()
                .map(|p| p.final_i64())
                .collect::<Int64Array>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("user_id", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("qty", DataType::Int64, true),
            Field::new("props", crate::data::schema::string_map_type(), true),
        ])
    }

    #[test]
    fn parses_every_function() {
        let s = schema();
        let kind = |e: &str| parse_aggregate("a", e, &s).unwrap().kind;
        assert_eq!(kind("count(*)"), AggKind::CountStar);
        assert_eq!(kind("COUNT(qty)"), AggKind::Count);
        assert_eq!(kind("count(DISTINCT user_id)"), AggKind::CountDistinct);
        assert_eq!(
            kind("approx_count_distinct(user_id)"),
            AggKind::ApproxCountDistinct {
                precision: 9,
                rsd: 0.05
            }
        );
        assert_eq!(
            kind("approx_count_distinct(user_id, 0.01)"),
            AggKind::ApproxCountDistinct {
                precision: 14,
                rsd: 0.01
            }
        );
        assert_eq!(kind("sum(price)"), AggKind::Sum);
        assert_eq!(kind("avg(qty)"), AggKind::Avg);
        assert!(parse_aggregate("a", "median(qty)", &s)
            .unwrap_err()
            .contains("unknown function"));
        assert!(parse_aggregate("a", "sum(user_id)", &s)
            .unwrap_err()
            .contains("numeric"));
        assert!(parse_aggregate("a", "count(nope)", &s)
            .unwrap_err()
            .contains("not in source.schema"));
        assert!(parse_aggregate("a", "count(distinct props)", &s).is_err());
        assert!(parse_aggregate("a", "count", &s).is_err());
    }

    fn run(spec: &AggregateSpec, values: &[Scalar<'_>]) -> Partial {
        let mut p = spec.new_partial();
        for v in values {
            p.update(spec.kind, *v);
        }
        p
    }

    #[test]
    fn merge_of_partials_equals_one_pass() {
        let s = schema();
        let values: Vec<Scalar<'_>> = (0..100)
            .map(|i| {
                if i % 7 == 0 {
                    Scalar::Null
                } else {
                    Scalar::Float(i as f64)
                }
            })
            .collect();
        for expr in [
            "count(*)",
            "count(price)",
            "sum(price)",
            "min(price)",
            "max(price)",
            "avg(price)",
        ] {
            let spec = parse_aggregate("a", expr, &s).unwrap();
            let mut whole = run(&spec, &values);
            let mut left = run(&spec, &values[..37]);
            let right = run(&spec, &values[37..]);
            left.merge(&right).unwrap();
            let a = output_column(&spec, &mut [&mut whole]);
            let b = output_column(&spec, &mut [&mut left]);
            assert_eq!(a.to_data(), b.to_data(), "{expr}");
        }
        let avg = parse_aggregate("a", "avg(price)", &s).unwrap();
        let mut p = run(&avg, &values);
        let col = output_column(&avg, &mut [&mut p]);
        let col = col.as_any().downcast_ref::<Float64Array>().unwrap();
        let expected: Vec<f64> = (0..100).filter(|i| i % 7 != 0).map(|i| i as f64).collect();
        assert_eq!(
            col.value(0),
            expected.iter().sum::<f64>() / expected.len() as f64
        );
    }

    #[test]
    fn hyperloglog_is_within_error_and_merges() {
        let s = schema();
        let spec = parse_aggregate("a", "approx_count_distinct(user_id)", &s).unwrap();
        let ids: Vec<String> = (0..50_000).map(|i| format!("user-{i}")).collect();
        let mut a = spec.new_partial();
        let mut b = spec.new_partial();
        for (i, id) in ids.iter().enumerate() {
            // Overlapping halves: the merge must not double count.
            if i < 30_000 {
                a.update(spec.kind, Scalar::Str(id));
            }
            if i >= 20_000 {
                b.update(spec.kind, Scalar::Str(id));
            }
        }
        a.merge(&b).unwrap();
        let bytes = postcard::to_allocvec(&a).unwrap();
        let mut back: Partial = postcard::from_bytes(&bytes).unwrap();
        let est = back.final_i64().unwrap() as f64;
        let err = (est - 50_000.0).abs() / 50_000.0;
        assert!(err < 3.0 * DEFAULT_RSD, "estimate {est} off by {err}");
        let mut small = spec.new_partial();
        for id in &ids[..100] {
            small.update(spec.kind, Scalar::Str(id));
        }
        // Small cardinalities are exact in HLL++'s sparse mode.
        assert_eq!(small.final_i64(), Some(100));
    }

    #[test]
    fn integer_sums_and_extremes_stay_integers() {
        let s = schema();
        let sum = parse_aggregate("a", "sum(qty)", &s).unwrap();
        assert_eq!(sum.output_type(), DataType::Int64);
        let mut p = run(&sum, &[Scalar::Int(2), Scalar::Null, Scalar::Int(40)]);
        assert_eq!(p.final_i64(), Some(42));
        let min = parse_aggregate("a", "min(qty)", &s).unwrap();
        let mut empty = run(&min, &[Scalar::Null]);
        let col = output_column(&min, &mut [&mut empty]);
        assert!(col.is_null(0));
    }

    /// A sketch that arrives from a peer is kept only as one this process rebuilt: equal in
    /// estimate, refused at another precision, and no corruption of its bytes gets a panic
    /// past the check.
    #[test]
    fn sketches_from_a_peer_are_rebuilt_or_refused() {
        let s = schema();
        let spec = parse_aggregate("a", "approx_count_distinct(user_id)", &s).unwrap();
        let finer = parse_aggregate("a", "approx_count_distinct(user_id, 0.01)", &s).unwrap();
        for n in [10, 5_000] {
            let ids: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
            let values: Vec<Scalar<'_>> = ids.iter().map(|i| Scalar::Str(i)).collect();
            let mut sketch = run(&spec, &values);
            let bytes = postcard::to_allocvec(&sketch).unwrap();
            let received: Partial = postcard::from_bytes(&bytes).unwrap();
            let mut admitted = received.admitted(&spec).expect("a sound sketch");
            assert_eq!(admitted.final_i64(), sketch.final_i64(), "{n} values");
            assert!(run(&finer, &values).admitted(&spec).is_none());
            // Corrupt one byte at a time (a sample of positions): decoded or not, nothing
            // panics past `admitted`.
            for at in (0..bytes.len()).step_by(bytes.len() / 64 + 1) {
                for byte in [0x00, 0x7f, 0xff] {
                    let mut bad = bytes.clone();
                    bad[at] = byte;
                    if let Ok(p) = postcard::from_bytes::<Partial>(&bad) {
                        if let Some(mut p) = p.admitted(&spec) {
                            p.final_i64();
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn merges_are_checked() {
        let mut count = Partial::Count(i64::MAX);
        assert_eq!(
            count.merge(&Partial::Count(1)),
            Err(MergeError::Overflow("count"))
        );
        assert!(matches!(count, Partial::Count(i64::MAX)));
        assert!(matches!(
            count.merge(&Partial::SumI(Some(1))),
            Err(MergeError::Mismatch { .. })
        ));
        // An integer sum past i64 is null, Spark's try_sum; it stays null once merged.
        let mut sum = Partial::SumI(Some(i64::MAX - 1));
        sum.update(AggKind::Sum, Scalar::Int(5));
        assert!(matches!(sum, Partial::SumIOverflow));
        assert_eq!(sum.final_i64(), None);
        let mut other = Partial::SumI(Some(3));
        other.merge(&sum).unwrap();
        assert!(matches!(other, Partial::SumIOverflow));
        let mut a = Partial::SumI(Some(i64::MIN));
        a.merge(&Partial::SumI(Some(-1))).unwrap();
        assert!(matches!(a, Partial::SumIOverflow));
        assert_eq!(
            merge_all(&mut [Partial::Count(1)], &[]),
            Err(MergeError::Arity { ours: 1, theirs: 0 })
        );
        let mut distinct = Partial::Distinct(i64::MAX);
        assert!(distinct.add_distinct(1).is_err());
        assert!(Partial::Count(0).add_distinct(1).is_err());
    }
}
