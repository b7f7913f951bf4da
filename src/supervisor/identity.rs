//! The data dir and the registry a supervisor serves, known by what they are (device and
//! inode), not by their names. The names can be made to point elsewhere at any time: the dir
//! deleted (`rm -rf`), moved away and made again, or a symlink to it swapped for another. A
//! supervisor that kept serving after that would be unreachable (its socket gone with the
//! dir) or would serve a dir another supervisor serves; it notices within a second (the loop
//! looks on every wake and at least every second, and the dir's own deletion or move wakes
//! it at once) and exits.
//!
//! The lock that keeps two supervisors from one data dir is a file inside it, so it dies
//! with the dir: a dir made again under the same name is a new dir, free to be served.

use crate::protocol::DataDir;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Device, inode, and birth time where the filesystem keeps one (an inode number freed by
/// `rm -rf` can be given to the next `mkdir`; its birth time cannot be the same).
pub type FileId = (u64, u64, Option<std::time::SystemTime>);

fn id_of(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino(), m.created().ok())
}

/// What a path names now: following symlinks (`follow`) or not.
pub fn file_id(path: &Path, follow: bool) -> Option<FileId> {
    let m = if follow { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) }.ok()?;
    Some(id_of(&m))
}

/// What an open descriptor is.
pub fn fd_id(f: &std::fs::File) -> Option<FileId> {
    Some(id_of(&f.metadata().ok()?))
}

#[derive(Debug, Clone)]
pub struct Identity {
    root: PathBuf,
    root_id: FileId,
    db: PathBuf,
    db_id: Option<FileId>,
}

impl Identity {
    /// Takes the data dir's identity now (the path as the user named it, through a symlink)
    /// and the registry's, once it exists.
    pub fn take(data: &DataDir) -> std::io::Result<Self> {
        let root_id = file_id(data.root(), true).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is gone", data.root().display()))
        })?;
        Ok(Self {
            root: data.root().to_path_buf(),
            root_id,
            db: data.db_file(),
            db_id: file_id(&data.db_file(), false),
        })
    }

    /// Records the registry file as it is now (after it was opened or made).
    pub fn with_registry(mut self) -> Self {
        self.db_id = file_id(&self.db, false);
        self
    }

    pub fn root_id(&self) -> FileId {
        self.root_id
    }

    /// Why the data dir or the registry is no longer the one this supervisor serves, if so.
    pub fn lost(&self) -> Option<String> {
        match file_id(&self.root, true) {
            None => return Some(format!("the data dir {} was deleted or moved away", self.root.display())),
            Some(id) if id != self.root_id => {
                return Some(format!(
                    "the data dir {} was replaced by another directory (deleted and made again, moved, or a \
                     symlink swapped)",
                    self.root.display()
                ));
            }
            Some(_) => {}
        }
        let db = self.db_id?;
        match file_id(&self.db, false) {
            None => Some(format!("the registry {} was deleted or moved away", self.db.display())),
            Some(id) if id != db => Some(format!("the registry {} was replaced by another file", self.db.display())),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_deleted_moved_or_swapped_is_noticed() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("a");
        std::fs::create_dir(&real).unwrap();
        let link = d.path().join("data");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let data = DataDir::new(link.clone());
        std::fs::write(data.db_file(), b"x").unwrap();
        let id = Identity::take(&data).unwrap().with_registry();
        assert_eq!(id.lost(), None);

        // The registry replaced by another file of the same name.
        std::fs::remove_file(data.db_file()).unwrap();
        std::fs::write(data.db_file(), b"y").unwrap();
        assert!(id.lost().unwrap().contains("registry"), "{:?}", id.lost());
        let id = Identity::take(&data).unwrap().with_registry();

        // The symlink swapped for one to another directory.
        let other = d.path().join("b");
        std::fs::create_dir(&other).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        assert!(id.lost().unwrap().contains("replaced"), "{:?}", id.lost());

        // Deleted outright.
        std::fs::remove_file(&link).unwrap();
        assert!(id.lost().unwrap().contains("deleted"), "{:?}", id.lost());
    }
}
