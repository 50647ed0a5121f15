//! Writes Parquet files into a Delta table's location without committing them: the driver
//! makes them visible with its commit. deltalake's writer gives the add actions with stats.
//!
//! A write runs in its own task, so a run the driver abandons cannot leave a file being written
//! behind it: the next run waits for that write first. The driver sweeps files no commit
//! references after the next commit, and this makes sure every such file is there by then.
//!
//! The table is opened (its log read) in the background as soon as the executor has its job,
//! so that the first epoch that stages rows does not wait for it.

use std::collections::{BTreeMap, HashMap};

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A table that receives staged files.
pub struct StagedTable {
    url: String,
    options: HashMap<String, String>,
    table: Option<DeltaTable>,
    /// The table being opened ahead of the first write.
    opening: Option<JoinHandle<Result<DeltaTable, DeltaTableError>>>,
    /// A write an abandoned run started and did not wait for.
    in_flight: Option<JoinHandle<Result<Vec<String>, DeltaTableError>>>,
}

impl StagedTable {
    /// A table at `url`; `options` configure its object store (`s3://`).
    pub fn new(url: &str, options: &BTreeMap<String, String>) -> Self {
        weir_storage::delta_schemes::register();
        Self {
            url: url.to_string(),
            options: weir_storage::delta_schemes::delta_options(options),
            table: None,
            opening: None,
            in_flight: None,
        }
    }

    /// Starts opening the table in a task of its own; the first write takes it from there.
    /// The driver creates its tables before it lets executors register, so the table exists.
    pub fn open_in_background(&mut self) {
        if self.table.is_none() && self.opening.is_none() {
            let open = open(self.url.clone(), self.options.clone());
            self.opening = Some(tokio::spawn(open.in_current_span()));
        }
    }

    async fn table(&mut self) -> Result<&DeltaTable, DeltaTableError> {
        if self.table.is_none() {
            let opened = match self.opening.take() {
                Some(opening) => match opening.await {
                    Ok(opened) => opened.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
                // Opened again below, where its error, if it lasts, fails the epoch.
                .inspect_err(|e| tracing::warn!(url = %self.url, "opening the table ahead: {e}"))
                .ok(),
                None => None,
            };
            self.table = Some(match opened {
                Some(table) => table,
                None => open(self.url.clone(), self.options.clone()).await?,
            });
        }
        self.table
            .as_ref()
            .ok_or_else(|| DeltaTableError::Generic("table not loaded".into()))
    }

    /// Waits until a write started by an abandoned run has finished (its files are in place
    /// or it failed). Every run stages before it answers the driver, so files an abandoned run
    /// was writing are in place before the next run's answer, as the driver's sweep after the
    /// next commit needs.
    async fn settle(&mut self) {
        if let Some(write) = self.in_flight.as_mut() {
            // Awaiting by reference: if this run is abandoned too, the next one still waits.
            let _ = write.await;
            self.in_flight = None;
        }
    }

    /// Writes `batches` as Parquet files and returns their add actions as JSON.
    pub async fn stage(&mut self, batches: &[RecordBatch]) -> Result<Vec<String>, DeltaTableError> {
        self.settle().await;
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let table = self.table().await?.clone();
        let batches: Vec<RecordBatch> = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .cloned()
            .collect();
        let write = self
            .in_flight
            .insert(tokio::spawn(write(table, batches).in_current_span()));
        let written = write.await;
        self.in_flight = None;
        written.map_err(|e| DeltaTableError::Generic(format!("the staging task failed: {e}")))?
    }
}

/// Opens the table at `url` (the driver creates it before the first epoch runs).
async fn open(
    url: String,
    options: HashMap<String, String>,
) -> Result<DeltaTable, DeltaTableError> {
    let parsed = url::Url::parse(&url)
        .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
    deltalake::open_table_with_storage_options(parsed, options).await
}

async fn write(
    table: DeltaTable,
    batches: Vec<RecordBatch>,
) -> Result<Vec<String>, DeltaTableError> {
    let mut writer = RecordBatchWriter::for_table(&table)?;
    for batch in batches {
        writer.write(batch).await?;
    }
    let adds = writer.flush().await?;
    adds.iter()
        .map(|a| serde_json::to_string(a).map_err(DeltaTableError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::Int64Array;
    use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
    use deltalake::kernel::{DataType, PrimitiveType, StructField};
    use futures::FutureExt;

    use super::*;

    fn parquet_files(dir: &std::path::Path) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".parquet"))
            .collect();
        files.sort();
        files
    }

    /// A directory for a table, and its URL.
    fn table_dir() -> (tempfile::TempDir, url::Url) {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        (dir, url)
    }

    async fn create_table(url: &url::Url) {
        DeltaTable::try_from_url(url.clone())
            .await
            .unwrap()
            .create()
            .with_columns([StructField::new(
                "n",
                DataType::Primitive(PrimitiveType::Long),
                true,
            )])
            .await
            .unwrap();
    }

    fn numbers(from: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", ArrowType::Int64, true)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(from..from + 1000))],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_table_opened_ahead_takes_the_first_write() {
        let (dir, url) = table_dir();
        create_table(&url).await;
        let mut table = StagedTable::new(url.as_str(), &BTreeMap::new());
        table.open_in_background();
        let adds = table.stage(&[numbers(0)]).await.unwrap();
        assert_eq!(adds.len(), 1);
        assert_eq!(parquet_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn a_table_that_could_not_be_opened_ahead_is_opened_at_the_first_write() {
        let (dir, url) = table_dir();
        let mut table = StagedTable::new(url.as_str(), &BTreeMap::new());
        // Nothing is there yet: opening ahead fails, and has by the time the table is made.
        table.open_in_background();
        let opening = table.opening.as_ref().expect("opening ahead");
        while !opening.is_finished() {
            tokio::task::yield_now().await;
        }
        create_table(&url).await;
        let adds = table.stage(&[numbers(0)]).await.unwrap();
        assert_eq!(adds.len(), 1, "the write opens the table itself");
        assert_eq!(parquet_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn a_write_cut_short_by_an_abandoned_run_is_in_place_once_settled() {
        let (dir, url) = table_dir();
        create_table(&url).await;
        let mut table = StagedTable::new(url.as_str(), &BTreeMap::new());
        let first = table.stage(&[numbers(0)]).await.unwrap();
        assert_eq!(first.len(), 1);

        // The run is dropped while its write is under way, as an abandoned epoch is.
        assert!(table.stage(&[numbers(1000)]).now_or_never().is_none());
        table.settle().await;
        assert_eq!(
            parquet_files(dir.path()).len(),
            2,
            "the second file is written before the next run goes on"
        );

        // The next run stages as usual.
        let third = table.stage(&[numbers(2000)]).await.unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(parquet_files(dir.path()).len(), 3);
    }
}
