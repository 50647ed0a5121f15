//! Opens an object store for a URL. `s3://` stores take `AWS_*` variables from the environment
//! and the job's `storage_options` on top (object_store's key names), and always use
//! conditional put (`If-None-Match`), which create-only writes of the log and Delta commits need.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("location `{url}`: {message}")]
    Location { url: String, message: String },
    #[error("{location}: {source}")]
    Local {
        location: String,
        source: std::io::Error,
    },
    #[error("{location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
}

/// An object store and the path of a location inside it.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    pub url: String,
}

impl Location {
    /// The path of `rel` (`a/b/c`) under the location.
    pub fn path(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// `rel` relative to the location, for messages.
    pub fn display(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url.trim_end_matches('/'))
    }

    /// The local file of `rel` when the location is a `file://` directory.
    pub fn local_file(&self, rel: &str) -> Option<std::path::PathBuf> {
        let dir = Url::parse(&self.url)
            .ok()
            .filter(|u| u.scheme() == "file")?
            .to_file_path()
            .ok()?;
        Some(
            rel.split('/')
                .filter(|p| !p.is_empty())
                .fold(dir, |p, part| p.join(part)),
        )
    }

    /// The numbers that name the objects directly under `dir` (epochs, generations).
    pub async fn numbered(&self, dir: &str) -> Result<Vec<u64>, StorageError> {
        let prefix = self.path(dir);
        let entries: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_error(dir, e))?;
        Ok(entries
            .iter()
            .filter_map(|m| m.location.filename().and_then(|f| f.parse::<u64>().ok()))
            .collect())
    }

    /// Deletes the staging files of writes cut short under `dir` (and below it when
    /// `recursive`): a `file://` store writes `<name>#<n>` and renames it into place, so a
    /// process killed in between leaves it, and object_store's listings never show it. A
    /// zombie's write in flight then fails, as it should. Other stores write objects whole.
    /// Answers how many were deleted.
    pub fn remove_interrupted_writes(
        &self,
        dir: &str,
        recursive: bool,
    ) -> Result<usize, StorageError> {
        let Some(local) = self.local_file(dir) else {
            return Ok(0);
        };
        let fail = |e: std::io::Error| StorageError::Local {
            location: self.display(dir),
            source: e,
        };
        let mut removed = 0;
        let mut dirs = vec![local];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(e)),
            };
            for entry in entries {
                let entry = entry.map_err(fail)?;
                let kind = entry.file_type().map_err(fail)?;
                if kind.is_dir() {
                    if recursive {
                        dirs.push(entry.path());
                    }
                    continue;
                }
                if !entry.file_name().to_str().is_some_and(is_staging_name) {
                    continue;
                }
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        Ok(removed)
    }

    pub fn store_error(&self, rel: &str, source: object_store::Error) -> StorageError {
        StorageError::Store {
            location: self.display(rel),
            source,
        }
    }
}

/// Opens the object store of `url`; `options` apply to `s3://` locations.
pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Location, StorageError> {
    let fail = |message: String| StorageError::Location {
        url: url.to_string(),
        message,
    };
    let parsed = Url::parse(url).map_err(|e| fail(e.to_string()))?;
    let (store, root): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
        scheme @ ("file" | "memory") => {
            if scheme == "file" {
                // LocalFileSystem lists and writes only under directories that exist.
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| fail("not a local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating it: {e}")))?;
            }
            let (store, root) =
                object_store::parse_url(&parsed).map_err(|e| fail(e.to_string()))?;
            (Arc::from(store), root)
        }
        "s3" | "s3a" => {
            let store = s3_store(&parsed, options.iter(), true).map_err(fail)?;
            let root = Path::from_url_path(parsed.path()).map_err(|e| fail(e.to_string()))?;
            (Arc::new(store), root)
        }
        other => {
            return Err(fail(format!(
                "unsupported scheme `{other}://`; expected file:// or s3://"
            )))
        }
    };
    Ok(Location {
        store,
        root,
        url: url.to_string(),
    })
}

/// Builds the S3 client of a bucket URL. With `strict`, an option object_store does not know
/// is an error; deltalake passes its own options too, which are skipped then.
pub(crate) fn s3_store<'a>(
    url: &Url,
    options: impl Iterator<Item = (&'a String, &'a String)>,
    strict: bool,
) -> Result<AmazonS3, String> {
    let mut builder = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    for (key, value) in options {
        match key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            Ok(k) => builder = builder.with_config(k, value.clone()),
            Err(_) if strict => {
                return Err(format!(
                    "unknown storage option `{key}` (expected object_store's S3 keys such as \
                     aws_endpoint, aws_region, aws_access_key_id, aws_secret_access_key, aws_allow_http)"
                ))
            }
            Err(_) => {}
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// `<name>#<digits>`: the staging file of object_store's local filesystem put.
fn is_staging_name(file: &str) -> bool {
    file.rsplit_once('#').is_some_and(|(name, n)| {
        !name.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_locations_take_options_and_refuse_unknown_ones() {
        let mut options = BTreeMap::new();
        options.insert("aws_endpoint".to_string(), "http://127.0.0.1:1".to_string());
        options.insert("aws_allow_http".to_string(), "true".to_string());
        options.insert("aws_region".to_string(), "us-east-1".to_string());
        let loc = open("s3://bucket/some/table", &options).unwrap();
        assert_eq!(loc.root.as_ref(), "some/table");
        assert_eq!(loc.path("state/x").as_ref(), "some/table/state/x");
        options.insert("aws_endpiont".to_string(), "typo".to_string());
        let err = open("s3://bucket/t", &options).unwrap_err().to_string();
        assert!(
            err.contains("unknown storage option `aws_endpiont`"),
            "{err}"
        );
        let err = open("gs://bucket/t", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn file_locations_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("a/b")).unwrap();
        let loc = open(url.as_str(), &BTreeMap::new()).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        assert_eq!(loc.display("x"), format!("{}x", url.as_str()));
    }
}
