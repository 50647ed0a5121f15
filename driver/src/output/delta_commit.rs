//! The only Delta writer of a job: creates the tables, and commits each epoch's staged files in
//! one transaction carrying `SetTransaction(app_id, epoch)`, so a repeated commit is a no-op.
//! After a failed run it deletes the data files no commit references (staged by the run).

use std::collections::{BTreeMap, HashSet};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use deltalake::arrow::datatypes::{DataType, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::merge::MergeMetrics;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};

use crate::output::merge::{merge_rows, MergeKeys};

/// One Delta table the driver commits to.
pub struct DeltaCommitter {
    table: DeltaTable,
    url: String,
    app_id: String,
    partition_by: Vec<String>,
    /// The epoch this committer last put in the table, while nothing has failed since: a later
    /// epoch cannot be there yet, so its commit skips reading the log to look. (Another writer
    /// of the same job, were there one, makes the commit fail with a concurrent-transaction
    /// conflict; the retry looks again.)
    committed_through: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("Delta table {url}: {source}")]
    Delta {
        url: String,
        source: DeltaTableError,
    },
    #[error("Delta table {url}: malformed add action from an executor: {source}")]
    BadAdd {
        url: String,
        source: serde_json::Error,
    },
    #[error("Delta table {url} exists with another schema; expected {expected}")]
    SchemaMismatch { url: String, expected: String },
}

/// Columns that get min/max statistics: all but binary ones, which have no useful order.
fn stats_columns(schema: &SchemaRef) -> Option<String> {
    let columns: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| !matches!(f.data_type(), DataType::Binary | DataType::LargeBinary))
        .map(|f| f.name().as_str())
        .collect();
    (columns.len() < schema.fields().len()).then(|| columns.join(","))
}

impl DeltaCommitter {
    /// Opens the table at `url`, creating it with `schema` when it does not exist yet (with
    /// `file_bytes` as its `delta.targetFileSize` when given).
    pub async fn open_or_create(
        url: &str,
        options: &BTreeMap<String, String>,
        name: &str,
        schema: &SchemaRef,
        partition_by: &[String],
        app_id: &str,
        file_bytes: Option<u64>,
    ) -> Result<Self, CommitError> {
        let err = |source| CommitError::Delta {
            url: url.to_string(),
            source,
        };
        let parsed = url::Url::parse(url)
            .map_err(|e| err(DeltaTableError::InvalidTableLocation(e.to_string())))?;
        if parsed.scheme() == "file" {
            if let Ok(dir) = parsed.to_file_path() {
                std::fs::create_dir_all(&dir).map_err(|e| err(DeltaTableError::from(e)))?;
            }
        }
        weir_storage::delta_schemes::register();
        let mut table = DeltaTableBuilder::from_url(parsed)
            .map_err(err)?
            .with_storage_options(weir_storage::delta_schemes::delta_options(options))
            .build()
            .map_err(err)?;
        // Loading a location without a log makes delta-kernel log an ERROR before deltalake
        // answers "not a table": a new table's first start would look like a failure.
        if table.verify_deltatable_existence().await.map_err(err)? {
            table.load().await.map_err(err)?;
        }
        let delta_schema: StructType = schema
            .as_ref()
            .try_into_kernel()
            .map_err(|e| err(DeltaTableError::Generic(format!("schema conversion: {e}"))))?;
        let table = if table.version().is_some() {
            let existing = table.snapshot().map_err(err)?.schema();
            let names = |s: &StructType| {
                let mut n: Vec<String> = s.fields().map(|f| f.name().clone()).collect();
                n.sort();
                n
            };
            if names(&existing) != names(&delta_schema) {
                return Err(CommitError::SchemaMismatch {
                    url: url.to_string(),
                    expected: format!("{:?}", names(&delta_schema)),
                });
            }
            table
        } else {
            table
                .create()
                .with_table_name(name)
                .with_columns(delta_schema.fields().cloned())
                .with_partition_columns(partition_by.to_vec())
                .with_configuration_property(
                    deltalake::TableProperty::DataSkippingStatsColumns,
                    stats_columns(schema),
                )
                .with_configuration_property(
                    deltalake::TableProperty::TargetFileSize,
                    file_bytes.map(|b| b.to_string()),
                )
                .with_save_mode(SaveMode::Ignore)
                .await
                .map_err(err)?
        };
        Ok(Self {
            table,
            url: url.to_string(),
            app_id: app_id.to_string(),
            partition_by: partition_by.to_vec(),
            committed_through: None,
        })
    }

    /// The table as of this committer's last read or commit.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, source: DeltaTableError) -> CommitError {
        CommitError::Delta {
            url: self.url.clone(),
            source,
        }
    }

    /// The last epoch this job committed to the table.
    pub async fn committed_epoch(&mut self) -> Result<Option<u64>, CommitError> {
        self.table.update_state().await.map_err(|e| self.err(e))?;
        let snapshot = self.table.snapshot().map_err(|e| self.err(e))?;
        let version = snapshot
            .transaction_version(self.table.log_store().as_ref(), &self.app_id)
            .await
            .map_err(|e| self.err(e))?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// Whether `epoch` still has to go into the table (it may be there already: a restarted
    /// driver commits its last decision again). Clears what this committer knows until its
    /// commit succeeds: after a failure the next attempt looks.
    pub async fn needs(&mut self, epoch: u64) -> Result<bool, CommitError> {
        let known_earlier = self.committed_through.take().is_some_and(|e| e < epoch);
        if !known_earlier && self.committed_epoch().await?.is_some_and(|e| e >= epoch) {
            tracing::info!(epoch, table = %self.url, "epoch already in the table");
            return Ok(false);
        }
        Ok(true)
    }

    /// The add actions of an epoch's staged files, from their JSON.
    pub fn parse_adds(&self, adds: &[String]) -> Result<Vec<Add>, CommitError> {
        adds.iter()
            .map(|json| serde_json::from_str::<Add>(json))
            .collect::<Result<_, _>>()
            .map_err(|source| CommitError::BadAdd {
                url: self.url.clone(),
                source,
            })
    }

    /// The epoch's `SetTransaction`, which makes its commit recognisable.
    fn epoch_transaction(&self, epoch: u64) -> CommitProperties {
        let txn = Transaction::new(&self.app_id, i64::try_from(epoch).unwrap_or(i64::MAX));
        CommitProperties::default().with_application_transaction(txn)
    }

    /// MERGEs the epoch's rows (`schema`; read from its staged files `adds`) into the table on
    /// `keys`
    /// (update mode), in one commit with the epoch's transaction, and deletes the staged files
    /// once it is in. Call it for an epoch the table [`needs`](Self::needs). Returns the new
    /// table version and what the MERGE did.
    pub async fn merge(
        &mut self,
        epoch: u64,
        adds: &[Add],
        rows: Vec<RecordBatch>,
        schema: &SchemaRef,
        keys: &MergeKeys,
    ) -> Result<(Option<u64>, MergeMetrics), CommitError> {
        let properties = self.epoch_transaction(epoch);
        let (table, metrics) = merge_rows(self.table.clone(), rows, schema, keys, properties)
            .await
            .map_err(|e| self.err(e))?;
        self.table = table;
        self.committed_through = Some(epoch);
        let store = self.table.log_store().object_store(None);
        for add in adds {
            if let Ok(path) = Path::from_url_path(&add.path) {
                if let Err(e) = store.delete(&path).await {
                    tracing::warn!(table = %self.url, file = %add.path, "deleting a merged staged file: {e}");
                }
            }
        }
        Ok((self.table.version(), metrics))
    }

    /// Commits the epoch's adds; returns the new table version, or `None` when there was
    /// nothing to add or the epoch is already in the table.
    pub async fn commit(
        &mut self,
        epoch: u64,
        adds: &[String],
    ) -> Result<Option<u64>, CommitError> {
        if adds.is_empty() || !self.needs(epoch).await? {
            return Ok(None);
        }
        let actions: Vec<Action> = self
            .parse_adds(adds)?
            .into_iter()
            .map(Action::Add)
            .collect();
        let properties = self.epoch_transaction(epoch);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
            predicate: None,
        };
        let snapshot = self.table.snapshot().map_err(|e| self.err(e))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(|e| self.err(e))?;
        let version = finalized.version();
        // The commit's own view of the table after it, as deltalake's operations keep it: no
        // second read of the log.
        self.table.state = Some(finalized.snapshot());
        self.committed_through = Some(epoch);
        Ok(Some(version))
    }

    /// Deletes the data files in the table's location that no commit references: what a failed
    /// or abandoned run staged. Only call it when no run is staging and every decision is
    /// committed, or it would delete files about to be committed. Answers how many it deleted.
    pub async fn remove_unreferenced_files(&mut self) -> Result<usize, CommitError> {
        if self.table.version().is_none() {
            return Ok(0);
        }
        self.table.update_state().await.map_err(|e| self.err(e))?;
        let log_store = self.table.log_store();
        let snapshot = self.table.snapshot().map_err(|e| self.err(e))?;
        let mut referenced: HashSet<Path> = snapshot
            .log_data()
            .iter()
            .map(|f| f.object_store_path())
            .collect();
        let removed: Vec<Path> = snapshot
            .all_tombstones(log_store.as_ref())
            .map_ok(|t| {
                let path = t.path();
                Path::parse(path.as_ref()).unwrap_or_else(|_| Path::from(path.as_ref()))
            })
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        referenced.extend(removed);
        let store = log_store.object_store(None);
        let listed: Vec<_> = store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| self.err(e.into()))?;
        let mut deleted = 0;
        for meta in listed {
            let location = meta.location;
            let data_file = location.as_ref().ends_with(".parquet")
                && !location.as_ref().starts_with("_delta_log/");
            if data_file && !referenced.contains(&location) {
                store
                    .delete(&location)
                    .await
                    .map_err(|e| self.err(e.into()))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(table = %self.url, files = deleted, "deleted files staged by failed runs");
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn add(name: &str) -> Vec<String> {
        vec![format!(
            r#"{{"path":"{name}.parquet","partitionValues":{{}},"size":1,"modificationTime":0,"dataChange":true}}"#
        )]
    }

    async fn open(url: &str) -> DeltaCommitter {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        DeltaCommitter::open_or_create(url, &BTreeMap::new(), "t", &schema, &[], "job", None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_epoch_reaches_the_table_once_whoever_commits_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path())
            .unwrap()
            .to_string();
        let mut first = open(&url).await;
        assert!(first.commit(0, &add("a")).await.unwrap().is_some());
        assert!(first.commit(1, &add("b")).await.unwrap().is_some());
        assert_eq!(first.committed_epoch().await.unwrap(), Some(1));

        // A restarted driver commits the last decision again: a no-op.
        let mut second = open(&url).await;
        assert_eq!(second.commit(1, &add("b")).await.unwrap(), None);
        // It goes on with epoch 2 while the first, which has not failed, still believes the
        // table ends at its epoch 1: the first's commit of epoch 2 must not add it again.
        let version = second.commit(2, &add("c")).await.unwrap();
        assert!(version.is_some());
        let err = first.commit(2, &add("c")).await.unwrap_err();
        assert!(err.to_string().contains("Concurrent transaction"), "{err}");
        // Its retry looks at the log and finds the epoch there.
        assert_eq!(first.commit(2, &add("c")).await.unwrap(), None);
        let mut third = open(&url).await;
        assert_eq!(third.committed_epoch().await.unwrap(), Some(2));
        assert_eq!(third.table.snapshot().unwrap().log_data().num_files(), 3);
    }
}
