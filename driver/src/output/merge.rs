//! MERGE of an epoch's rows into a Delta table on key columns (update output mode, or a dedup
//! query's upsert): a row whose keys the table holds replaces it, any other is inserted. The rows come from the files the
//! executors staged for the epoch; delta-rs's merge writes the result and commits it with the
//! epoch's `SetTransaction`, so a repeated epoch is recognised and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::{new_null_array, ArrayRef, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::{Column, TableReference};
use deltalake::datafusion::functions::core::expr_fn::get_field;
use deltalake::datafusion::logical_expr::{binary_expr, Operator};
use deltalake::datafusion::prelude::{Expr, SessionContext};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Add;
use deltalake::operations::merge::MergeMetrics;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTable, DeltaTableError, ObjectStore, Path};
use object_store::ObjectStoreExt;
use weir_common::job::{DeltaSink, OutputMode, Query};

/// One key column of the MERGE: a top-level column, or a field of a struct column
/// (`window.start`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeKey {
    pub column: String,
    pub field: Option<String>,
    /// Null-safe comparison (`IS NOT DISTINCT FROM`) for a column that may hold nulls: a null
    /// group key must match its own row, not insert another.
    pub nullable: bool,
}

/// Which columns identify a row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeKeys(pub Vec<MergeKey>);

const SOURCE: &str = "source";
const TARGET: &str = "target";

fn column(relation: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(TableReference::bare(relation)), name))
}

impl MergeKeys {
    /// The join predicate: every key equal in source and target.
    fn predicate(&self) -> Option<Expr> {
        self.0
            .iter()
            .map(|key| {
                let side = |relation| {
                    let c = column(relation, &key.column);
                    match &key.field {
                        Some(field) => get_field(c, field.as_str()),
                        None => c,
                    }
                };
                if key.nullable {
                    binary_expr(side(TARGET), Operator::IsNotDistinctFrom, side(SOURCE))
                } else {
                    side(TARGET).eq(side(SOURCE))
                }
            })
            .reduce(Expr::and)
    }
}

impl MergeKeys {
    /// How the output table's rows are identified when epochs MERGE into it: in update mode
    /// by the window's start and end and the group keys; for a dedup query that upserts by
    /// its `merge_on` columns and the table's partition columns (so each MERGE reads only the
    /// partitions its rows fall in, and a row replaces only one of its own partition). `None`
    /// when epochs append.
    pub fn of_output(query: &Query, table: &DeltaSink, schema: &SchemaRef) -> Option<Self> {
        let key = |column: &str, field: Option<&str>| MergeKey {
            column: column.to_string(),
            field: field.map(str::to_string),
            nullable: field.is_none()
                && schema
                    .field_with_name(column)
                    .map_or(true, |f| f.is_nullable()),
        };
        let keys: Vec<MergeKey> = match query {
            Query::Window(w) if w.output_mode == OutputMode::Update => {
                let window = ["start", "end"].map(|field| key("window", Some(field)));
                window
                    .into_iter()
                    .chain(w.group_by.iter().map(|group| key(group, None)))
                    .collect()
            }
            Query::Dedup(_) if !table.merge_on.is_empty() => {
                let mut columns: Vec<&String> = table.merge_on.iter().collect();
                for p in &table.partition_by {
                    if !columns.contains(&p) {
                        columns.push(p);
                    }
                }
                columns.into_iter().map(|c| key(c, None)).collect()
            }
            _ => return None,
        };
        Some(Self(keys))
    }
}

/// Reads the rows of staged files `adds` (JSON add actions) from the table's store, with their
/// partition columns put back from the add actions, as `schema`.
pub async fn read_staged(
    table: &DeltaTable,
    adds: &[Add],
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, DeltaTableError> {
    let store: Arc<dyn ObjectStore> = table.log_store().object_store(None);
    let mut batches = Vec::new();
    for add in adds {
        let path = Path::from_url_path(&add.path)
            .map_err(|e| DeltaTableError::Generic(format!("staged file {}: {e}", add.path)))?;
        // An epoch's changed rows: small files, read whole.
        let bytes = store.get(&path).await?.bytes().await?;
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
            batches.push(with_partition_values(
                &batch?,
                &add.partition_values,
                schema,
            )?);
        }
    }
    Ok(batches)
}

/// `batch` as `schema`: a column the file does not hold is a partition column, whose value
/// the add action carries.
fn with_partition_values(
    batch: &RecordBatch,
    partition_values: &HashMap<String, Option<String>>,
    schema: &SchemaRef,
) -> Result<RecordBatch, DeltaTableError> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> Result<ArrayRef, DeltaTableError> {
            if let Some(c) = batch.column_by_name(field.name()) {
                return Ok(c.clone());
            }
            let value = partition_values.get(field.name()).ok_or_else(|| {
                DeltaTableError::Generic(format!(
                    "a staged file has no column {} and no partition value for it",
                    field.name()
                ))
            })?;
            Ok(match value {
                None => new_null_array(field.data_type(), rows),
                Some(v) => {
                    let strings: ArrayRef = Arc::new(StringArray::from(vec![v.as_str(); rows]));
                    cast(&strings, field.data_type())?
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// MERGEs `rows` into `table` on `keys` (every column of a matched row updated, an unmatched
/// row inserted), in one commit with `properties` (the epoch's `SetTransaction`).
pub async fn merge_rows(
    table: DeltaTable,
    rows: Vec<RecordBatch>,
    schema: &SchemaRef,
    keys: &MergeKeys,
    properties: CommitProperties,
) -> Result<(DeltaTable, MergeMetrics), DeltaTableError> {
    let predicate = keys
        .predicate()
        .ok_or_else(|| DeltaTableError::Generic("a MERGE needs at least one key".into()))?;
    let source = SessionContext::new().read_batches(rows)?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    table
        .merge(source, predicate)
        .with_source_alias(SOURCE)
        .with_target_alias(TARGET)
        .with_commit_properties(properties)
        .when_matched_update(|update| {
            names.iter().fold(update, |u, name| {
                u.update(name.as_str(), column(SOURCE, name))
            })
        })?
        .when_not_matched_insert(|insert| {
            names
                .iter()
                .fold(insert, |i, name| i.set(name.as_str(), column(SOURCE, name)))
        })?
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use deltalake::arrow::array::{
        Array, AsArray, Int64Array, StructArray, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, TimeUnit};
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    use futures::TryStreamExt;

    use super::*;
    use crate::output::delta_commit::DeltaCommitter;

    fn window_type() -> DataType {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        DataType::Struct(Fields::from(vec![
            Field::new("start", ts.clone(), false),
            Field::new("end", ts, false),
        ]))
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("window", window_type(), false),
            Field::new("g", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]))
    }

    fn keys() -> MergeKeys {
        let window = |field: &str| MergeKey {
            column: "window".into(),
            field: Some(field.into()),
            nullable: false,
        };
        MergeKeys(vec![
            window("start"),
            window("end"),
            MergeKey {
                column: "g".into(),
                field: None,
                nullable: true,
            },
        ])
    }

    /// Rows (window start in seconds, group, n) of 5-second windows.
    fn rows(rows: &[(i64, Option<&str>, i64)]) -> RecordBatch {
        let ts = |f: fn(&(i64, Option<&str>, i64)) -> i64| {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(f))
                    .with_timezone("UTC"),
            ) as ArrayRef
        };
        let DataType::Struct(fields) = window_type() else {
            unreachable!()
        };
        let window = StructArray::new(
            fields,
            vec![ts(|r| r.0 * 1_000_000), ts(|r| (r.0 + 5) * 1_000_000)],
            None,
        );
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(window),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    /// Stages `batch` as the executors do; answers its add actions.
    async fn stage(committer: &DeltaCommitter, batch: RecordBatch) -> Vec<String> {
        let mut writer = RecordBatchWriter::for_table(committer.table()).unwrap();
        writer.write(batch).await.unwrap();
        let adds = writer.flush().await.unwrap();
        adds.iter()
            .map(|a| serde_json::to_string(a).unwrap())
            .collect()
    }

    /// The table's rows, sorted.
    async fn table_rows(committer: &DeltaCommitter) -> Vec<(i64, Option<String>, i64)> {
        let (_, stream) = committer.table().clone().scan_table().await.unwrap();
        let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let window = b.column_by_name("window").unwrap().as_struct();
            let starts = window
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>();
            let groups = cast(b.column_by_name("g").unwrap(), &DataType::Utf8).unwrap();
            let groups = groups.as_string::<i32>();
            let ns = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.push((
                    starts.value(i) / 1_000_000,
                    groups.is_valid(i).then(|| groups.value(i).to_string()),
                    ns.value(i),
                ));
            }
        }
        out.sort();
        out
    }

    /// The test table at `url`, partitioned by `g`.
    async fn open(url: &str, file_bytes: Option<u64>) -> DeltaCommitter {
        let partition_by = ["g".to_string()];
        DeltaCommitter::open_or_create(
            url,
            &BTreeMap::new(),
            "t",
            &schema(),
            &partition_by,
            "job",
            file_bytes,
        )
        .await
        .unwrap()
    }

    /// Merges an epoch's staged files as the driver's commit does; `None` when the table has
    /// the epoch already.
    async fn merge_epoch(
        table: &mut DeltaCommitter,
        epoch: u64,
        staged: &[String],
    ) -> Option<MergeMetrics> {
        if !table.needs(epoch).await.unwrap() {
            return None;
        }
        let adds = table.parse_adds(staged).unwrap();
        let rows = read_staged(table.table(), &adds, &schema()).await.unwrap();
        let (version, metrics) = table
            .merge(epoch, &adds, rows, &schema(), &keys())
            .await
            .unwrap();
        assert!(version.is_some());
        Some(metrics)
    }

    /// With a bounded file size (what update mode sets), a MERGE that changes one row rewrites
    /// the file holding it, not the table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merge_rewrites_only_the_files_holding_changed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path())
            .unwrap()
            .to_string();
        let mut table = open(&url, Some(16 * 1024)).await;
        let all: Vec<(i64, Option<&str>, i64)> =
            (0..20_000).map(|i| (i * 5, Some("a"), 1)).collect();
        let first = stage(&table, rows(&all)).await;
        merge_epoch(&mut table, 0, &first).await;
        let files = table.table().snapshot().unwrap().log_data().num_files();
        assert!(files > 2, "the first merge wrote {files} file(s)");
        let last = stage(&table, rows(&[(19_999 * 5, Some("a"), 2)])).await;
        let metrics = merge_epoch(&mut table, 1, &last).await.unwrap();
        assert_eq!(metrics.num_target_rows_updated, 1);
        assert_eq!(metrics.num_target_files_removed, 1, "{metrics:?}");
        assert!(
            metrics.num_target_rows_copied < 20_000 / 2,
            "copied {} rows",
            metrics.num_target_rows_copied
        );
    }

    /// Each epoch's rows replace the table's rows of the same window and group (a null group
    /// included) or are added; a repeated epoch changes nothing; staged files are gone after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merging_epochs_keeps_the_latest_value_of_every_window_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path())
            .unwrap()
            .to_string();
        let mut table = open(&url, None).await;
        let first = stage(
            &table,
            rows(&[(10, Some("a"), 5), (15, Some("a"), 1), (10, None, 2)]),
        )
        .await;
        assert!(merge_epoch(&mut table, 0, &first).await.is_some());
        let second = stage(
            &table,
            rows(&[(15, Some("a"), 2), (10, None, 3), (25, Some("b"), 1)]),
        )
        .await;
        let metrics = merge_epoch(&mut table, 1, &second).await.unwrap();
        assert_eq!(
            (
                metrics.num_target_rows_updated,
                metrics.num_target_rows_inserted
            ),
            (2, 1)
        );
        let expected = vec![
            (10, None, 3),
            (10, Some("a".to_string()), 5),
            (15, Some("a".to_string()), 2),
            (25, Some("b".to_string()), 1),
        ];
        assert_eq!(table_rows(&table).await, expected);
        // A restarted driver merges the last decision again: the table is left alone.
        let mut again = open(&url, None).await;
        assert!(merge_epoch(&mut again, 1, &second).await.is_none());
        assert_eq!(table_rows(&again).await, expected);
        // The staged files were deleted once merged: only the table's own files remain.
        assert_eq!(again.remove_unreferenced_files().await.unwrap(), 0);
    }
}
