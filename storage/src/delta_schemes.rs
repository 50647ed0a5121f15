//! Teaches deltalake the `s3://` scheme with the same S3 client as the checkpoint (see
//! `location.rs`) and deltalake's default log store, which commits with conditional put. This
//! avoids deltalake's AWS SDK stack and its DynamoDB lock: S3 now enforces `If-None-Match`.

use std::collections::HashMap;
use std::sync::{Arc, Once};

use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory,
    ObjectStoreFactory, ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError};
use object_store::path::Path;
use url::Url;

struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let store = crate::location::s3_store(url, config.raw.iter(), false)
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}

struct DefaultLogStores;

impl LogStoreFactory for DefaultLogStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Registers `s3://` and `s3a://` with deltalake; later calls do nothing.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            if let Ok(url) = Url::parse(scheme) {
                object_store_factories().insert(url.clone(), Arc::new(S3Stores));
                logstore_factories().insert(url, Arc::new(DefaultLogStores));
            }
        }
    });
}

/// The job's storage options as deltalake takes them.
pub fn delta_options(
    options: &std::collections::BTreeMap<String, String>,
) -> HashMap<String, String> {
    options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
