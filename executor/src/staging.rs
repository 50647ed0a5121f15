//! Writes Parquet files into a Delta table's location without committing them: the driver
//! makes them visible with its commit. deltalake's writer gives the add actions with stats.

use std::collections::{BTreeMap, HashMap};

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

/// A table that receives staged files.
pub struct StagedTable {
    url: String,
    options: HashMap<String, String>,
    table: Option<DeltaTable>,
}

impl StagedTable {
    /// A table at `url`; `options` configure its object store (`s3://`).
    pub fn new(url: &str, options: &BTreeMap<String, String>) -> Self {
        weir_storage::delta_schemes::register();
        Self {
            url: url.to_string(),
            options: weir_storage::delta_schemes::delta_options(options),
            table: None,
        }
    }

    async fn table(&mut self) -> Result<&DeltaTable, DeltaTableError> {
        if self.table.is_none() {
            let url = url::Url::parse(&self.url)
                .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{}: {e}", self.url)))?;
            // The driver creates the table before the first epoch runs.
            self.table =
                Some(deltalake::open_table_with_storage_options(url, self.options.clone()).await?);
        }
        self.table
            .as_ref()
            .ok_or_else(|| DeltaTableError::Generic("table not loaded".into()))
    }

    /// Writes `batches` as Parquet files and returns their add actions as JSON.
    pub async fn stage(&mut self, batches: &[RecordBatch]) -> Result<Vec<String>, DeltaTableError> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let table = self.table().await?;
        let mut writer = RecordBatchWriter::for_table(table)?;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            writer.write(batch.clone()).await?;
        }
        let adds = writer.flush().await?;
        adds.iter()
            .map(|a| serde_json::to_string(a).map_err(DeltaTableError::from))
            .collect()
    }
}
