//! Files: content on disk under the data directory, metadata in the store, streamed in
//! and out through per-connection handles (`ConnContext` holds at most one upload and one
//! download). Uploads are written to `<id>.part` and renamed after an fsync, so a
//! connection that drops mid-upload leaves nothing visible, and a listed file is whole.
//!
//! Writes and reads are plain blocking file I/O on the connection's thread: chunks are
//! socket-sized and hit the page cache; only the final fsync waits for the disk, and it
//! runs on a blocking thread.

use crate::store::{FileMeta, Storage};
use hub_plugin_sdk::{CoreError, UserId};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// An upload in progress.
pub struct Upload {
    id: [u8; 16],
    file: File,
    part: PathBuf,
    meta: FileMeta,
    written: u64,
}

/// A download in progress.
pub struct Download {
    id: [u8; 16],
    file: File,
    meta: FileMeta,
    reader: UserId,
    read: u64,
    counted: bool,
}

impl Download {
    /// The file's size.
    pub fn size(&self) -> u64 {
        self.meta.size
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(e: std::io::Error) -> CoreError {
    CoreError::Internal(format!("file storage: {e}"))
}

fn file_id(bytes: &[u8]) -> Result<[u8; 16], CoreError> {
    bytes
        .try_into()
        .map_err(|_| CoreError::Invalid(format!("a file id is 16 bytes, not {}", bytes.len())))
}

/// Where file content lives.
#[derive(Clone, Debug)]
pub struct FileDir(pub PathBuf);

impl FileDir {
    fn path(&self, id: &[u8; 16]) -> PathBuf {
        self.0.join(hex(id))
    }

    /// Starts an upload owned by `owner`.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        store: &dyn Storage,
        owner: UserId,
        id: &[u8],
        size: u64,
        ttl_ms: u64,
        downloads: u32,
        now_unix_ms: u64,
    ) -> Result<Upload, CoreError> {
        let id = file_id(id)?;
        self.expire(store, &id, now_unix_ms)?;
        if store
            .file_meta(id)
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .is_some()
        {
            return Err(CoreError::Invalid("file id already in use".into()));
        }
        std::fs::create_dir_all(&self.0).map_err(io)?;
        let part = self.path(&id).with_extension("part");
        let file = File::create(&part).map_err(io)?;
        Ok(Upload {
            id,
            file,
            part,
            meta: FileMeta {
                owner,
                size,
                expires_unix_ms: now_unix_ms.saturating_add(ttl_ms),
                downloads_left: downloads.max(1),
            },
            written: 0,
        })
    }

    /// Appends to an upload.
    pub fn write(upload: &mut Upload, bytes: &[u8]) -> Result<(), CoreError> {
        let total = upload.written + bytes.len() as u64;
        if total > upload.meta.size {
            return Err(CoreError::Invalid(format!(
                "{total} bytes written, {} announced",
                upload.meta.size
            )));
        }
        upload.file.write_all(bytes).map_err(io)?;
        upload.written = total;
        Ok(())
    }

    /// Makes a complete upload durable and visible (blocking: fsync).
    pub fn finish(&self, store: &dyn Storage, upload: Upload) -> Result<(), CoreError> {
        if upload.written != upload.meta.size {
            return Err(CoreError::Invalid(format!(
                "{} bytes written, {} announced",
                upload.written, upload.meta.size
            )));
        }
        let Upload {
            id,
            file,
            part,
            meta,
            ..
        } = upload;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&part, self.path(&id)).map_err(io)?;
        store
            .put_file_meta(id, &meta)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        Ok(())
    }

    /// Drops an unfinished upload (its partial content is deleted).
    pub fn abandon(upload: Upload) {
        let _ = std::fs::remove_file(&upload.part);
    }

    /// Opens a stored file for `reader`.
    pub fn open(
        &self,
        store: &dyn Storage,
        reader: UserId,
        id: &[u8],
        now_unix_ms: u64,
    ) -> Result<Download, CoreError> {
        let id = file_id(id)?;
        self.expire(store, &id, now_unix_ms)?;
        let meta = store
            .file_meta(id)
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .ok_or(CoreError::NoSuchFile)?;
        let file = File::open(self.path(&id)).map_err(|_| CoreError::NoSuchFile)?;
        Ok(Download {
            id,
            file,
            meta,
            reader,
            read: 0,
            counted: false,
        })
    }

    /// Reads the next bytes; the first empty read (the end) counts the download, and the
    /// file is removed once it has been fetched often enough.
    pub fn read(
        &self,
        store: &dyn Storage,
        download: &mut Download,
        max: u32,
    ) -> Result<Vec<u8>, CoreError> {
        let want = (download.meta.size - download.read).min(u64::from(max)) as usize;
        let mut bytes = vec![0u8; want];
        download.file.read_exact(&mut bytes).map_err(io)?;
        download.read += want as u64;
        if want == 0 && !download.counted {
            download.counted = true;
            self.count_download(store, download)?;
        }
        Ok(bytes)
    }

    fn count_download(&self, store: &dyn Storage, download: &Download) -> Result<(), CoreError> {
        if download.reader == download.meta.owner {
            return Ok(());
        }
        let internal = |e: crate::store::StoreError| CoreError::Internal(e.to_string());
        let Some(mut meta) = store.file_meta(download.id).map_err(internal)? else {
            return Ok(());
        };
        meta.downloads_left = meta.downloads_left.saturating_sub(1);
        if meta.downloads_left == 0 {
            self.remove(store, &download.id)?;
            tracing::debug!(file = %hex(&download.id), "file removed after its downloads");
        } else {
            store.put_file_meta(download.id, &meta).map_err(internal)?;
        }
        Ok(())
    }

    fn remove(&self, store: &dyn Storage, id: &[u8; 16]) -> Result<(), CoreError> {
        store
            .remove_file_meta(*id)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        // Readers that still hold the file open keep reading it (Unix semantics).
        let _ = std::fs::remove_file(self.path(id));
        Ok(())
    }

    fn expire(
        &self,
        store: &dyn Storage,
        id: &[u8; 16],
        now_unix_ms: u64,
    ) -> Result<(), CoreError> {
        let meta = store
            .file_meta(*id)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        if meta.is_some_and(|m| m.expires_unix_ms <= now_unix_ms) {
            self.remove(store, id)?;
        }
        Ok(())
    }

    /// Removes every expired file and leftover partial upload; returns how many files
    /// went.
    pub fn sweep(&self, store: &dyn Storage, now_unix_ms: u64) -> Result<usize, CoreError> {
        let mut removed = 0;
        let metas = store
            .file_metas()
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        for (id, meta) in metas {
            if meta.expires_unix_ms <= now_unix_ms {
                self.remove(store, &id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes partial uploads left by a crash (call at start).
    pub fn clean_partials(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "part") {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }
}
