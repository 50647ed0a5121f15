//! The file source's listing: which files under its location the next epochs may read. The
//! driver lists; executors read. Files are taken in name order after the last one decided.

use futures::TryStreamExt;
use object_store::path::Path;
use weir_common::checkpoint::InputFile;
use weir_storage::location::{Location, StorageError};

pub struct FileLister {
    location: Location,
}

/// Spark's rule: a path part starting with `_` or `.` marks a file that is not data (`_SUCCESS`,
/// `.part-0.crc`, a writer's temporary file).
fn hidden(path: &str) -> bool {
    path.split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

impl FileLister {
    pub fn new(location: Location) -> Self {
        Self { location }
    }

    pub fn url(&self) -> &str {
        &self.location.url
    }

    /// The data files whose paths (relative to the location) sort after `after`, in name
    /// order; every file when `after` is none.
    pub async fn list_after(&self, after: Option<&str>) -> Result<Vec<InputFile>, StorageError> {
        let store = &self.location.store;
        let root = &self.location.root;
        let listing = match after {
            // Listing from an offset lets S3 skip what was read (start-after).
            Some(name) => store.list_with_offset(Some(root), &self.location.path(name)),
            None => store.list(Some(root)),
        };
        let objects: Vec<_> = listing
            .try_collect()
            .await
            .map_err(|e| self.location.store_error("", e))?;
        let mut files: Vec<InputFile> = objects
            .into_iter()
            .filter_map(|meta| {
                let path = relative(root, &meta.location)?;
                let newer = after.is_none_or(|a| path.as_str() > a);
                (newer && !hidden(&path)).then_some(InputFile {
                    path,
                    bytes: meta.size,
                })
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

/// `location` relative to `root`, as `a/b/c`.
fn relative(root: &Path, location: &Path) -> Option<String> {
    let parts: Vec<String> = location
        .prefix_match(root)?
        .map(|p| p.as_ref().to_string())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[tokio::test]
    async fn lists_data_files_in_name_order_after_the_last_read() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "2026/01/02/b.jsonl",
            "2026/01/01/a.jsonl",
            "2026/01/01/_SUCCESS",
            "2026/01/01/.a.jsonl.crc",
            "_temporary/x.jsonl",
            "z.jsonl",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"{}\n").unwrap();
        }
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let location =
            weir_storage::location::open(url.as_str().trim_end_matches('/'), &BTreeMap::new())
                .unwrap();
        let lister = FileLister::new(location);
        let names = |files: Vec<InputFile>| files.into_iter().map(|f| f.path).collect::<Vec<_>>();
        assert_eq!(
            names(lister.list_after(None).await.unwrap()),
            vec!["2026/01/01/a.jsonl", "2026/01/02/b.jsonl", "z.jsonl"]
        );
        assert_eq!(
            names(lister.list_after(Some("2026/01/01/a.jsonl")).await.unwrap()),
            vec!["2026/01/02/b.jsonl", "z.jsonl"]
        );
        assert!(lister.list_after(Some("z.jsonl")).await.unwrap().is_empty());
        assert_eq!(lister.list_after(None).await.unwrap()[0].bytes, 3);
    }
}
