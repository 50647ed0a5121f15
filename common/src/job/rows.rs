//! A query's row expressions (docs/architecture.md, Plan of operators): its `WHERE` and the
//! columns it computes (expression group keys, expression aggregate arguments) before the
//! stateful operator, and its `HAVING` after it. DataFusion plans each SQL expression against
//! the columns it reads and evaluates it over Arrow batches; the windows, state and exchange
//! stay weir's. A row an expression cannot be evaluated on (a failed `CAST`, a division by
//! zero) is set aside with its reason, never the batch it came in.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, concat_batches, filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};
use sqlparser::ast::{Expr, ExprWithAlias};

/// A row expression as the query's SQL gives it, and where it stands there (`line L column
/// C: `, or empty), for its errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub expr: Expr,
    pub at: String,
}

/// One SQL expression, planned against the schema it reads.
#[derive(Clone)]
pub struct RowExpr {
    /// The expression as SQL, for errors, reasons and `weir explain`.
    pub sql: String,
    expr: Arc<dyn PhysicalExpr>,
}

impl fmt::Debug for RowExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql)
    }
}

impl PartialEq for RowExpr {
    fn eq(&self, other: &Self) -> bool {
        self.sql == other.sql
    }
}

/// Plans SQL expressions with DataFusion.
pub struct ExprPlanner {
    state: SessionState,
}

impl Default for ExprPlanner {
    fn default() -> Self {
        // Identifiers keep their case, as the rest of the query's SQL reads them.
        let config = SessionConfig::new()
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        Self {
            state: SessionContext::new_with_config(config).state(),
        }
    }
}

impl ExprPlanner {
    /// `placed` planned against `schema`.
    pub fn plan(&self, placed: &Placed, schema: &Schema) -> Result<RowExpr, String> {
        let (expr, at) = (&placed.expr, &placed.at);
        let sql = expr.to_string();
        let df_schema = DFSchema::try_from(schema.clone()).map_err(|e| e.to_string())?;
        let logical = self
            .state
            .create_logical_expr_from_sql_expr(
                ExprWithAlias {
                    expr: expr.clone(),
                    alias: None,
                },
                &df_schema,
            )
            .map_err(|e| format!("{at}`{sql}`: {}", e.strip_backtrace()))?;
        // Some functions (`coalesce`, `nvl`) exist only to be rewritten by the simplifier,
        // which DataFusion's query planner runs and its expression planner does not.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .with_config_options(Arc::clone(self.state.config_options()))
                .build(),
        );
        let simplified = simplifier
            .coerce(logical, &df_schema)
            .and_then(|e| simplifier.simplify(e))
            .map_err(|e| format!("{at}`{sql}`: {}", e.strip_backtrace()))?;
        let physical = self
            .state
            .create_physical_expr(simplified, &df_schema)
            .map_err(|e| format!("{at}`{sql}`: {}", e.strip_backtrace()))?;
        Ok(RowExpr {
            sql,
            expr: physical,
        })
    }
}

/// Rows through a filter and computed columns: the batch holds the input's columns then the
/// computed ones, of the rows the filter kept. The expressions are planned against the input
/// columns they read, so a batch holding those (and any others: the decoder builds only the
/// columns the job's queries read) will do.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStage {
    pub filter: Option<RowExpr>,
    pub columns: Vec<(String, RowExpr)>,
    /// The source's columns then the computed ones.
    schema: SchemaRef,
    /// The source columns the expressions read, in the source's order.
    reads: Vec<String>,
    /// The computed columns' fields.
    computed: Vec<Field>,
}

/// What a [`RowStage`] made of a batch.
#[derive(Debug)]
pub struct StagedRows {
    pub batch: RecordBatch,
    /// The input row of each output row.
    pub origin: Vec<usize>,
    /// Input rows an expression could not be evaluated on, with the reason.
    pub rejected: Vec<(usize, String)>,
}

/// An expression that failed on some row of a batch.
struct Failed {
    sql: String,
    error: String,
}

impl RowStage {
    /// Plans `filter` and the named `columns` against `input` (each column reads the input's
    /// columns, not another computed one).
    pub fn plan(
        planner: &ExprPlanner,
        filter: Option<&Placed>,
        columns: &[(String, Placed)],
        input: &SchemaRef,
    ) -> Result<Self, String> {
        // Planned against the whole source first, for the types and the errors a user reads;
        // then again against only the columns read.
        let whole = Self::plan_against(planner, filter, columns, input)?;
        let mut read = std::collections::HashSet::new();
        for planned in whole
            .filter
            .iter()
            .chain(whole.columns.iter().map(|(_, e)| e))
        {
            read.extend(collect_columns(&planned.expr).iter().map(|c| c.index()));
        }
        let positions: Vec<usize> = (0..input.fields().len())
            .filter(|i| read.contains(i))
            .collect();
        let narrow = Arc::new(input.project(&positions).map_err(|e| e.to_string())?);
        let mut stage = Self::plan_against(planner, filter, columns, &narrow)?;
        stage.computed = stage.schema.fields()[narrow.fields().len()..]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        stage.reads = narrow.fields().iter().map(|f| f.name().clone()).collect();
        stage.schema = whole.schema;
        Ok(stage)
    }

    fn plan_against(
        planner: &ExprPlanner,
        filter: Option<&Placed>,
        columns: &[(String, Placed)],
        input: &SchemaRef,
    ) -> Result<Self, String> {
        let filter = match filter {
            Some(placed) => {
                let planned = planner.plan(placed, input)?;
                let t = planned.expr.data_type(input).map_err(|e| e.to_string())?;
                if t != DataType::Boolean && t != DataType::Null {
                    return Err(format!(
                        "{}`{}` is of type {t}: a condition must be boolean",
                        placed.at, planned.sql
                    ));
                }
                Some(planned)
            }
            None => None,
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut planned_columns = Vec::with_capacity(columns.len());
        for (name, placed) in columns {
            if fields.iter().any(|f| f.name() == name) {
                return Err(format!(
                    "{}`{name}` names a computed column, but the source has a column of that \
                     name: choose another name",
                    placed.at
                ));
            }
            let planned = planner.plan(placed, input)?;
            let t = planned.expr.data_type(input).map_err(|e| e.to_string())?;
            let nullable = planned.expr.nullable(input).map_err(|e| e.to_string())?;
            fields.push(Field::new(name, stored_type(&t), nullable));
            planned_columns.push((name.clone(), planned));
        }
        Ok(Self {
            filter,
            columns: planned_columns,
            schema: Arc::new(Schema::new(fields)),
            reads: Vec::new(),
            computed: Vec::new(),
        })
    }

    /// The input columns the expressions read, in the input's order.
    pub fn columns_read(&self) -> Vec<&str> {
        self.reads.iter().map(String::as_str).collect()
    }

    /// The schema of what [`Self::apply`] makes: the input's columns, then the computed ones.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The rows of `batch` the filter keeps, with the computed columns. Rows an expression
    /// fails on are found by splitting a failing range in halves, so a batch with a few bad
    /// rows costs a few extra evaluations, and every other row goes through.
    pub fn apply(&self, batch: &RecordBatch) -> Result<StagedRows, String> {
        let positions = self
            .reads
            .iter()
            .map(|name| batch.schema().index_of(name))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|e| format!("the decoded rows lack a column an expression reads: {e}"))?;
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(self.computed.iter().cloned());
        let schema = Arc::new(Schema::new(fields));
        let mut batches = Vec::new();
        let mut origin = Vec::new();
        let mut rejected = Vec::new();
        let mut ranges = vec![(0, batch.num_rows())];
        while let Some((offset, len)) = ranges.pop() {
            if len == 0 {
                continue;
            }
            match self.evaluate(&batch.slice(offset, len), &positions, &schema) {
                Ok((rows, kept)) => {
                    batches.push(rows);
                    origin.extend(kept.into_iter().map(|i| i + offset));
                }
                Err(failed) if len == 1 => {
                    rejected.push((offset, format!("{}: {}", failed.sql, failed.error)))
                }
                Err(_) => {
                    // The second half is pushed first so that the first is taken first and
                    // the output keeps the input's order.
                    let half = len / 2;
                    ranges.push((offset + half, len - half));
                    ranges.push((offset, half));
                }
            }
        }
        let batch = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
        Ok(StagedRows {
            batch,
            origin,
            rejected,
        })
    }

    /// The filter then the columns over `batch`: the rows kept, and their indices in `batch`.
    fn evaluate(
        &self,
        batch: &RecordBatch,
        reads: &[usize],
        schema: &SchemaRef,
    ) -> Result<(RecordBatch, Vec<usize>), Failed> {
        let read = |batch: &RecordBatch| {
            batch.project(reads).map_err(|e| Failed {
                sql: "the columns read".into(),
                error: e.to_string(),
            })
        };
        let (kept_rows, kept) = match &self.filter {
            Some(filter) => {
                let mask = evaluate(filter, &read(batch)?)?;
                let mask = mask.as_boolean_opt().cloned().unwrap_or_else(|| {
                    // A condition of type NULL keeps nothing.
                    BooleanArray::from(vec![false; batch.num_rows()])
                });
                let mask = match mask.null_count() {
                    0 => mask,
                    _ => prep_null_mask_filter(&mask),
                };
                let rows = filter_record_batch(batch, &mask).map_err(|e| Failed {
                    sql: filter.sql.clone(),
                    error: e.to_string(),
                })?;
                let kept: Vec<usize> = (0..mask.len()).filter(|&i| mask.value(i)).collect();
                (rows, kept)
            }
            None => (batch.clone(), (0..batch.num_rows()).collect()),
        };
        let mut columns = kept_rows.columns().to_vec();
        let kept_reads = read(&kept_rows)?;
        for ((_, planned), field) in self.columns.iter().zip(&self.computed) {
            let values = evaluate(planned, &kept_reads)?;
            let values = if values.data_type() == field.data_type() {
                values
            } else {
                cast(&values, field.data_type()).map_err(|e| Failed {
                    sql: planned.sql.clone(),
                    error: e.to_string(),
                })?
            };
            columns.push(values);
        }
        let rows = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Failed {
            sql: "computed columns".into(),
            error: e.to_string(),
        })?;
        Ok((rows, kept))
    }
}

fn evaluate(planned: &RowExpr, batch: &RecordBatch) -> Result<ArrayRef, Failed> {
    planned
        .expr
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| Failed {
            sql: planned.sql.clone(),
            error: e.strip_backtrace(),
        })
}

/// The type a computed column is kept in: the one the source schema would give the value
/// (strings as `Utf8`, integers as `Int32` or `Int64`, floats as `Float64`), so that grouping,
/// aggregates and the output table take it as they take a source column.
fn stored_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::Dictionary(_, value) if value.is_string() => DataType::Utf8,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float64,
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, MapBuilder, StringArray, StringBuilder};
    use sqlparser::dialect::GenericDialect;
    use sqlparser::parser::Parser;

    fn expr(sql: &str) -> Placed {
        let expr = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_expr())
            .unwrap();
        Placed {
            expr,
            at: String::new(),
        }
    }

    fn events() -> RecordBatch {
        let mut props = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for device in [Some("ios"), None, Some("web"), Some("ios")] {
            if let Some(d) = device {
                props.keys().append_value("device");
                props.values().append_value(d);
            }
            props.append(true).unwrap();
        }
        let props = props.finish();
        let schema = Schema::new(vec![
            Field::new("event_type", DataType::Utf8, false),
            Field::new("amount", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("properties", props.data_type().clone(), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["click", "view", "tap", "click"])),
                Arc::new(StringArray::from(vec![
                    Some("1.5"),
                    None,
                    Some("x"),
                    Some("2"),
                ])),
                Arc::new(Int64Array::from(vec![1, 0, 2, 4])),
                Arc::new(props),
            ],
        )
        .unwrap()
    }

    #[test]
    fn filter_case_and_map_access_compute_the_columns_a_query_groups_by() {
        let batch = events();
        let stage = RowStage::plan(
            &ExprPlanner::default(),
            Some(&expr("event_type <> 'view'")),
            &[
                (
                    "kind".into(),
                    expr("CASE WHEN event_type IN ('click', 'tap') THEN 'touch' ELSE 'other' END"),
                ),
                (
                    "device".into(),
                    expr("coalesce(properties['device'], 'unknown')"),
                ),
                ("twice".into(), expr("n * 2")),
            ],
            &batch.schema(),
        )
        .unwrap();
        assert_eq!(
            stage
                .schema()
                .field_with_name("device")
                .unwrap()
                .data_type(),
            &DataType::Utf8
        );
        let out = stage.apply(&batch).unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.origin, [0, 2, 3]);
        let column = |name: &str| out.batch.column_by_name(name).unwrap().clone();
        let strings = |name: &str| {
            column(name)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strings("kind"), ["touch", "touch", "touch"]);
        assert_eq!(strings("device"), ["ios", "web", "ios"]);
        assert_eq!(
            column("twice")
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap(),
            &Int64Array::from(vec![2, 4, 8])
        );
        // The decoder builds only the columns the job reads, in the source's order: a batch
        // without `amount` (read by nothing here) gives the same columns.
        assert_eq!(stage.columns_read(), ["event_type", "n", "properties"]);
        let narrow = batch.project(&[0, 2, 3]).unwrap();
        let again = stage.apply(&narrow).unwrap();
        assert_eq!(again.origin, out.origin);
        for name in ["kind", "device", "twice", "event_type"] {
            assert_eq!(
                again.batch.column_by_name(name),
                out.batch.column_by_name(name)
            );
        }
        let without = stage
            .apply(&batch.project(&[0, 1, 2]).unwrap())
            .unwrap_err();
        assert!(without.contains("properties"), "{without}");
    }

    #[test]
    fn a_row_an_expression_fails_on_is_set_aside_and_the_others_go_through() {
        let batch = events();
        let stage = RowStage::plan(
            &ExprPlanner::default(),
            None,
            &[("amount_value".into(), expr("CAST(amount AS DOUBLE)"))],
            &batch.schema(),
        )
        .unwrap();
        let out = stage.apply(&batch).unwrap();
        assert_eq!(out.origin, [0, 1, 3]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].0, 2);
        assert!(
            out.rejected[0].1.contains("CAST(amount AS DOUBLE)"),
            "{}",
            out.rejected[0].1
        );
        let values = out.batch.column_by_name("amount_value").unwrap();
        assert_eq!(
            values.as_any().downcast_ref::<Float64Array>().unwrap(),
            &Float64Array::from(vec![Some(1.5), None, Some(2.0)])
        );
    }

    #[test]
    fn planning_errors_name_the_expression() {
        let schema = events().schema();
        let planner = ExprPlanner::default();
        let err = RowStage::plan(&planner, Some(&expr("n + 1")), &[], &schema).unwrap_err();
        assert!(err.contains("must be boolean"), "{err}");
        let err = RowStage::plan(&planner, Some(&expr("missing = 1")), &[], &schema).unwrap_err();
        assert!(
            err.contains("`missing = 1`") && err.contains("missing"),
            "{err}"
        );
        let err =
            RowStage::plan(&planner, None, &[("n".into(), expr("n + 1"))], &schema).unwrap_err();
        assert!(err.contains("choose another name"), "{err}");
    }
}
