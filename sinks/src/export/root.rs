//! Where the export lives: a local directory (the default) or an S3 bucket through
//! `object_store`, and how each replaces a file whole.
//!
//! - Local: write under a temporary name, then rename over the old file (atomic on one file
//!   system).
//! - S3: one PUT (an object appears whole; S3 has no rename). Every partition file and the
//!   manifest are written with a conditional put against the version the cycle read at
//!   its start, so of two exporters writing one root at once, the one that read before the
//!   other wrote fails with [`ExportError::Concurrent`] at its first such write: it never
//!   writes an older partition over a newer one, nor publishes its manifest, and its next
//!   cycle starts again from what is there. (Deletions of emptied partitions are not
//!   conditional: S3 has no conditional delete.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{ExportError, TMP_MARK};

/// An open export root.
#[derive(Debug, Clone)]
pub struct ExportRoot {
    store: Arc<dyn ObjectStore>,
    /// The bucket's store without the root's prefix (what DataFusion registers for the URL).
    bucket: Option<(url::Url, Arc<dyn ObjectStore>)>,
    /// The directory of a local root.
    dir: Option<PathBuf>,
    location: String,
}

/// The version of a file read at the start of a cycle: `None` when it did not exist.
pub type Seen = Option<UpdateVersion>;

impl ExportRoot {
    /// Opens `root`: a directory (created if missing, `file://` allowed) or
    /// `s3://bucket[/prefix]`, configured from the standard `AWS_*` variables
    /// (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP` ...).
    pub fn open(root: &str) -> Result<Self, ExportError> {
        Self::open_with(root, std::iter::empty::<(&str, String)>())
    }

    /// `open` with S3 settings given here over the environment's (tests, embedding), named
    /// as `object_store` names them (`aws_endpoint`, `aws_allow_http` ...).
    pub fn open_with<K: AsRef<str>>(
        root: &str,
        s3_options: impl IntoIterator<Item = (K, String)>,
    ) -> Result<Self, ExportError> {
        match root.split_once("://") {
            Some(("s3", rest)) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(ExportError::Config(format!(
                        "export root {root}: no bucket (s3://bucket/prefix)"
                    )));
                }
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_conditional_put(S3ConditionalPut::ETagMatch);
                for (key, value) in s3_options {
                    let key: AmazonS3ConfigKey = key.as_ref().parse().map_err(|_| {
                        ExportError::Config(format!("unknown S3 setting {}", key.as_ref()))
                    })?;
                    builder = builder.with_config(key, value);
                }
                let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
                let url = url::Url::parse(&format!("s3://{bucket}"))
                    .map_err(|e| ExportError::Config(format!("export root {root}: {e}")))?;
                let prefix = prefix.trim_matches('/');
                let rooted: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    store.clone()
                } else {
                    Arc::new(PrefixStore::new(store.clone(), prefix))
                };
                Ok(Self {
                    store: rooted,
                    bucket: Some((url, store)),
                    dir: None,
                    location: format!("s3://{bucket}/{prefix}")
                        .trim_end_matches('/')
                        .to_owned(),
                })
            }
            Some(("file", _)) | None => {
                let dir = PathBuf::from(root.strip_prefix("file://").unwrap_or(root));
                std::fs::create_dir_all(&dir).map_err(|e| {
                    ExportError::Config(format!("cannot create export directory: {e}"))
                })?;
                let dir = dir.canonicalize().map_err(|e| {
                    ExportError::Config(format!("cannot resolve export directory: {e}"))
                })?;
                Ok(Self {
                    store: Arc::new(LocalFileSystem::new_with_prefix(&dir)?),
                    bucket: None,
                    location: dir.display().to_string(),
                    dir: Some(dir),
                })
            }
            Some((scheme, _)) => Err(ExportError::Config(format!(
                "export root scheme `{scheme}://` is not supported: use a directory or s3://bucket/prefix"
            ))),
        }
    }

    /// The store, rooted at the export root.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The root as a URL prefix (`s3://bucket/prefix`) or an absolute directory.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// For object stores: the bucket URL and its store, to register with DataFusion.
    pub fn bucket(&self) -> Option<&(url::Url, Arc<dyn ObjectStore>)> {
        self.bucket.as_ref()
    }

    /// Reads a file and its version; `None` when there is none.
    pub async fn get(&self, path: &StorePath) -> Result<Option<(Vec<u8>, Seen)>, ExportError> {
        match self.store.get(path).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await?;
                Ok(Some((bytes.to_vec(), Some(version))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The version of every file under `dataset` on an object store, by path (empty on a
    /// local root, whose writes are not conditional): what a cycle's writes are
    /// conditional on (`replace_if_unchanged`).
    pub async fn file_versions(
        &self,
        dataset: &str,
    ) -> Result<HashMap<String, UpdateVersion>, ExportError> {
        if self.bucket.is_none() {
            return Ok(HashMap::new());
        }
        self.store
            .list(Some(&StorePath::from(dataset)))
            .map_ok(|m| {
                let version = UpdateVersion {
                    e_tag: m.e_tag,
                    version: m.version,
                };
                (m.location.to_string(), version)
            })
            .try_collect()
            .await
            .map_err(Into::into)
    }

    /// Writes `bytes` at `path` whole: readers see the old or the new content, never a mix.
    pub async fn replace(&self, path: &StorePath, bytes: Vec<u8>) -> Result<(), ExportError> {
        if self.bucket.is_some() {
            self.store.put(path, PutPayload::from(bytes)).await?;
        } else {
            let tmp = StorePath::from(format!("{path}{TMP_MARK}{}", uuid::Uuid::new_v4()));
            self.store.put(&tmp, PutPayload::from(bytes)).await?;
            self.store.rename(&tmp, path).await?;
        }
        Ok(())
    }

    /// Removes the temporary files an interrupted cycle left under `dataset`. On a local
    /// disk they are found on the disk itself: `object_store` lists no file with `#` in its
    /// name, and its own staging files (`<temporary name>#<n>`) have one.
    pub async fn remove_leftovers(&self, dataset: &str) -> Result<usize, ExportError> {
        let leftovers: Vec<StorePath> = match &self.dir {
            Some(dir) => {
                let (dir, dataset) = (dir.clone(), dataset.to_owned());
                let files = tokio::task::spawn_blocking(move || temporary_files(&dir, &dataset))
                    .await
                    .map_err(|e| ExportError::Config(format!("listing leftovers: {e}")))?
                    .map_err(|e| ExportError::Config(format!("listing leftovers: {e}")))?;
                for file in &files {
                    tracing::info!(path = %file.display(), "removing a temporary file an interrupted export left");
                    std::fs::remove_file(file)
                        .map_err(|e| ExportError::Config(format!("removing a leftover: {e}")))?;
                }
                return Ok(files.len());
            }
            None => {
                self.store
                    .list(Some(&StorePath::from(dataset)))
                    .try_filter_map(|m| async move {
                        Ok(m.location
                            .filename()
                            .is_some_and(|f| f.contains(TMP_MARK))
                            .then_some(m.location))
                    })
                    .try_collect()
                    .await?
            }
        };
        for p in &leftovers {
            tracing::info!(path = %p, "removing a temporary object an interrupted export left");
            self.store.delete(p).await?;
        }
        Ok(leftovers.len())
    }

    /// `replace`, on an object store only if the file is still the version `seen` (read at
    /// the cycle's start; `None`: it must not exist yet).
    pub async fn replace_if_unchanged(
        &self,
        path: &StorePath,
        bytes: Vec<u8>,
        seen: Seen,
    ) -> Result<(), ExportError> {
        if self.bucket.is_none() {
            return self.replace(path, bytes).await;
        }
        let mode = match seen {
            Some(version) => PutMode::Update(version),
            None => PutMode::Create,
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(ExportError::Concurrent {
                path: path.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The files under `root/dataset` whose name marks them temporary.
fn temporary_files(root: &Path, dataset: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join(dataset)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else if entry.file_name().to_string_lossy().contains(TMP_MARK) {
                out.push(path);
            }
        }
    }
    Ok(out)
}
