//! Where client-supplied files land: the rules a file name must pass (base name only, never
//! outside the folder) and atomic writes (temp file in the same folder, flushed, renamed),
//! shared by the file service's WriteFile and the streaming service's uploads.

use std::{
    fmt,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

/// Names of files being written start with this; they are never listed, and a client may
/// not choose such a name, so a half-written file can never be mistaken for a stored one.
pub const TEMP_PREFIX: &str = ".partial-";

/// The longest file name most file systems accept (NAME_MAX), in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a client-supplied file name was refused. Every variant is the client's mistake
/// (INVALID_ARGUMENT); the messages are written for the person who sent the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileNameError {
    /// Nothing was given.
    #[error("file name is empty")]
    Empty,
    /// The name ends in a separator, or is `.`/`..`, so no file name is left.
    #[error("file name {0:?} has no base name (it is empty, `.`, `..` or ends in a separator)")]
    NoBaseName(String),
    /// NUL, newline or another control character.
    #[error("file name {0:?} contains a control character")]
    ControlCharacter(String),
    /// Longer than the file system allows.
    #[error("file name is {0} bytes long; the limit is {MAX_NAME_BYTES} bytes")]
    TooLong(usize),
    /// Collides with the server's own temporary files.
    #[error("file names starting with {TEMP_PREFIX:?} are reserved for the server")]
    Reserved,
}

/// A file name that passed [`safe_file_name`]: one plain path component, safe to join onto
/// the storage folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeFileName(String);

impl SafeFileName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reduces a client-supplied name to its base name, as the old servers did with
/// `os.path.basename`, but splitting on `\` too so a Windows-style `a\..\b` cannot climb,
/// and refusing what would not be a plain, visible file in the folder.
pub fn safe_file_name(raw: &str) -> Result<SafeFileName, FileNameError> {
    if raw.is_empty() {
        return Err(FileNameError::Empty);
    }
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    if base.trim().is_empty() || base == "." || base == ".." {
        return Err(FileNameError::NoBaseName(shorten(raw)));
    }
    if base.chars().any(char::is_control) {
        return Err(FileNameError::ControlCharacter(shorten(base)));
    }
    if base.len() > MAX_NAME_BYTES {
        return Err(FileNameError::TooLong(base.len()));
    }
    if base.starts_with(TEMP_PREFIX) {
        return Err(FileNameError::Reserved);
    }
    Ok(SafeFileName(base.to_owned()))
}

/// Keeps error messages readable when a client sends a megabyte-long name.
fn shorten(text: &str) -> String {
    const KEEP: usize = 80;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The status a client gets when storing its file failed on the server's side, chosen by
/// cause, for every service that stores files to use in its one error mapping: a full disk
/// or quota is RESOURCE_EXHAUSTED and says so; a folder in the way of the name is
/// FAILED_PRECONDITION (the name is valid, the server's state refuses it); anything else is
/// INTERNAL, its OS text logged here and not sent.
pub fn storage_status(cause: &io::Error) -> tonic::Status {
    match cause.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            tracing::warn!(error = %cause, "storage full");
            tonic::Status::resource_exhausted(
                "no space left on the server's disk: the file was not stored",
            )
        }
        io::ErrorKind::IsADirectory => tonic::Status::failed_precondition(
            "a folder of that name exists on the server: the file was not stored",
        ),
        _ => {
            tracing::error!(error = %cause, "file storage failed");
            tonic::Status::internal("the server could not store the file")
        }
    }
}

/// A folder that receives client files. All writes go through [`StorageDir::create`], so a
/// file appears under its final name complete or not at all.
#[derive(Debug, Clone)]
pub struct StorageDir {
    /// The folder as configured (`uploaded_files`), for the paths answered to clients.
    shown: PathBuf,
    /// The same folder, absolute, for the server's own work and its startup line.
    absolute: PathBuf,
    /// The prefix of this server's temporary files: [`TEMP_PREFIX`], then the owner's name
    /// if set, so that a server removing its crash debris at start never removes the
    /// in-progress files of another server sharing the folder.
    temp_prefix: String,
}

impl StorageDir {
    /// Creates the folder if needed.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let shown = path.into();
        fs::create_dir_all(&shown)?;
        let absolute = fs::canonicalize(&shown)?;
        Ok(Self {
            shown,
            absolute,
            temp_prefix: TEMP_PREFIX.to_owned(),
        })
    }

    /// The same folder, its temporary files marked as `owner`'s (`.partial-file-…`), which
    /// [`StorageDir::remove_stale_partials`] then removes.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.temp_prefix = format!("{TEMP_PREFIX}{owner}-");
        self
    }

    /// What a server does with its folder at start: opens it (creating it) as `owner`'s,
    /// and removes the unfinished files an earlier run left there, saying how many when
    /// there were any. Files a killed server left half-written are never listed; without
    /// this they would pile up unseen across restarts.
    pub fn open_for_server(path: impl Into<PathBuf>, owner: &str) -> io::Result<Self> {
        let storage = Self::open(path)?.owned_by(owner);
        let removed = storage.remove_stale_partials()?;
        if removed > 0 {
            tracing::info!(removed, folder = %storage.absolute.display(), "removed unfinished files left by an earlier run");
        }
        Ok(storage)
    }

    /// Removes this owner's temporary files, left by a server killed mid-write (they are
    /// never listed, so they would fill the disk unseen), and returns how many. Only for a
    /// server starting up: it would remove its own writes in progress. Without an owner
    /// (see [`StorageDir::owned_by`]) nothing is removed.
    pub fn remove_stale_partials(&self) -> io::Result<usize> {
        if self.temp_prefix == TEMP_PREFIX {
            return Ok(0);
        }
        let mut removed = 0;
        for entry in fs::read_dir(&self.absolute)? {
            let entry = entry?;
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(&self.temp_prefix));
            if ours && entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The folder's absolute path.
    pub fn absolute(&self) -> &Path {
        &self.absolute
    }

    /// The path a client is told its file is at: the folder as configured, then the name
    /// (`uploaded_files/notes.txt` by default, as the old servers answered).
    pub fn shown_path(&self, name: &SafeFileName) -> String {
        self.shown.join(name.as_str()).display().to_string()
    }

    /// Starts a file that becomes visible as `name` only on [`PendingFile::commit`]; dropped
    /// uncommitted, it leaves nothing behind.
    pub fn create(&self, name: &SafeFileName) -> io::Result<PendingFile> {
        let temp = tempfile::Builder::new()
            .prefix(&self.temp_prefix)
            .tempfile_in(&self.absolute)?;
        Ok(PendingFile {
            temp,
            destination: self.absolute.join(name.as_str()),
            folder: self.absolute.clone(),
            unflushed: 0,
            writeback: None,
        })
    }

    /// Writes a whole file atomically: readers see the old file or the new one, never a mix.
    pub fn write_atomic(&self, name: &SafeFileName, content: &[u8]) -> io::Result<()> {
        let mut pending = self.create(name)?;
        pending.write_all(content)?;
        pending.commit()
    }

    /// The regular files stored here, sorted; folders, links and unfinished files excluded.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.absolute)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not UTF-8: no client could have written it, none can ask for it.
            };
            if !name.starts_with(TEMP_PREFIX) {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

/// How much a [`PendingFile`] writes between starting background flushes. Linux begins
/// writeback on its own only at 10 % of memory dirty, so without these a large upload is
/// received first and flushed by the final sync afterwards, one after the other; with them
/// the disk works while data still arrives (measured: 1 GiB upload 220 MB/s before).
const WRITEBACK_EVERY: u64 = 64 * 1024 * 1024;

/// A file being written under a temporary name in its final folder.
#[derive(Debug)]
pub struct PendingFile {
    /// Deleted on drop unless persisted, which is what makes abandoning an upload clean.
    temp: tempfile::NamedTempFile,
    destination: PathBuf,
    folder: PathBuf,
    /// Bytes written since the last background flush started.
    unflushed: u64,
    /// A flush (`fdatasync` on a second handle) of what was written so far, running on its
    /// own thread while writing goes on. At most one runs; commit waits for it.
    writeback: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl PendingFile {
    /// Appends bytes; every [`WRITEBACK_EVERY`] bytes, starts flushing them in the background.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.temp.as_file_mut().write_all(bytes)?;
        self.unflushed += bytes.len() as u64;
        let idle = self
            .writeback
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished);
        if self.unflushed >= WRITEBACK_EVERY && idle {
            self.finish_writeback()?;
            let handle = self.temp.as_file().try_clone()?;
            self.writeback = Some(std::thread::spawn(move || handle.sync_data()));
            self.unflushed = 0;
        }
        Ok(())
    }

    /// Waits for the background flush, if one runs, and reports its failure.
    fn finish_writeback(&mut self) -> io::Result<()> {
        match self.writeback.take() {
            Some(flush) => flush
                .join()
                .map_err(|_| io::Error::other("the background flush panicked"))?,
            None => Ok(()),
        }
    }

    /// Flushes the content to disk, renames it into place (replacing any older file of that
    /// name in one step) and flushes the folder entry, so an acknowledged file survives a
    /// crash.
    pub fn commit(mut self) -> io::Result<()> {
        self.finish_writeback()?;
        // Temporary files are created private (0600); a stored file is an ordinary one that
        // other local users may read, as the old servers' files were.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            self.temp
                .as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        self.temp.as_file().sync_all()?;
        self.temp
            .persist(&self.destination)
            .map_err(|error| error.error)?;
        File::open(&self.folder)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> Result<String, FileNameError> {
        safe_file_name(raw).map(|safe| safe.as_str().to_owned())
    }

    /// Only the base name survives, whichever separator the client used.
    #[test]
    fn keeps_base_name_only() {
        assert_eq!(name("notes.txt").as_deref(), Ok("notes.txt"));
        assert_eq!(name("../../x").as_deref(), Ok("x"));
        assert_eq!(name("/etc/passwd").as_deref(), Ok("passwd"));
        assert_eq!(name(r"a\..\b").as_deref(), Ok("b"));
        assert_eq!(name(r"C:\Users\me\report.pdf").as_deref(), Ok("report.pdf"));
        assert_eq!(name(".bashrc").as_deref(), Ok(".bashrc"));
        assert_eq!(name("héllo wörld.txt").as_deref(), Ok("héllo wörld.txt"));
    }

    /// Names that leave nothing, or nothing safe, are refused with a reason.
    #[test]
    fn refuses_names_without_a_safe_base() {
        assert_eq!(name(""), Err(FileNameError::Empty));
        for raw in [".", "..", "/", "dir/", "a/..", r"a\.", "   "] {
            assert!(
                matches!(name(raw), Err(FileNameError::NoBaseName(_))),
                "{raw:?}"
            );
        }
        assert!(matches!(
            name("a\0b"),
            Err(FileNameError::ControlCharacter(_))
        ));
        assert!(matches!(
            name("line\nbreak"),
            Err(FileNameError::ControlCharacter(_))
        ));
        assert_eq!(name(&"x".repeat(256)), Err(FileNameError::TooLong(256)));
        assert_eq!(
            name(&format!("{TEMP_PREFIX}abc")),
            Err(FileNameError::Reserved)
        );
        assert!(name(&"x".repeat(255)).is_ok());
    }

    /// A committed file holds exactly what was written and replaces an older one.
    #[test]
    fn atomic_write_replaces_whole_file() -> io::Result<()> {
        let folder = tempfile::tempdir()?;
        let storage = StorageDir::open(folder.path())?;
        let target = safe_file_name("a.txt").expect("valid");
        storage.write_atomic(&target, b"first version, longer")?;
        storage.write_atomic(&target, b"second")?;
        assert_eq!(fs::read(folder.path().join("a.txt"))?, b"second");
        assert_eq!(storage.list()?, vec!["a.txt".to_owned()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(folder.path().join("a.txt"))?
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o644,
                "stored files are readable like ordinary files"
            );
        }
        Ok(())
    }

    /// A file large enough for background flushes commits whole and exact.
    #[test]
    fn large_file_with_background_flushes_commits_whole() -> io::Result<()> {
        let folder = tempfile::tempdir()?;
        let storage = StorageDir::open(folder.path())?;
        let mut pending = storage.create(&safe_file_name("big.bin").expect("valid"))?;
        let chunk: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 253) as u8).collect();
        let chunks = WRITEBACK_EVERY as usize / chunk.len() * 2 + 3;
        for _ in 0..chunks {
            pending.write_all(&chunk)?;
        }
        pending.commit()?;
        let stored = fs::read(folder.path().join("big.bin"))?;
        assert_eq!(stored.len(), chunks * chunk.len());
        assert!(
            stored
                .chunks(chunk.len())
                .all(|part| part == chunk.as_slice())
        );
        assert_eq!(storage.list()?, vec!["big.bin".to_owned()]);
        Ok(())
    }

    /// An abandoned file leaves neither the final name nor a temporary file.
    #[test]
    fn dropped_pending_file_leaves_nothing() -> io::Result<()> {
        let folder = tempfile::tempdir()?;
        let storage = StorageDir::open(folder.path())?;
        let mut pending = storage.create(&safe_file_name("big.bin").expect("valid"))?;
        pending.write_all(b"half of it")?;
        drop(pending);
        assert_eq!(fs::read_dir(folder.path())?.count(), 0);
        Ok(())
    }

    /// Listing shows finished regular files only, sorted.
    #[test]
    fn list_skips_folders_and_unfinished_files() -> io::Result<()> {
        let folder = tempfile::tempdir()?;
        let storage = StorageDir::open(folder.path())?;
        fs::write(folder.path().join("b.txt"), "b")?;
        fs::write(folder.path().join("a.txt"), "a")?;
        fs::create_dir(folder.path().join("sub"))?;
        let _pending = storage.create(&safe_file_name("c.txt").expect("valid"))?;
        assert_eq!(
            storage.list()?,
            vec!["a.txt".to_owned(), "b.txt".to_owned()]
        );
        Ok(())
    }

    /// At start, a server removes its own crash debris and nothing else: not another
    /// owner's files in progress, not stored files.
    #[test]
    fn removes_only_its_own_stale_partials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("open").owned_by("file");
        let other = StorageDir::open(dir.path())
            .expect("open")
            .owned_by("streaming");
        let ours = storage.create(&name_ok("a.txt")).expect("create");
        let theirs = other.create(&name_ok("b.txt")).expect("create");
        storage
            .write_atomic(&name_ok("kept.txt"), b"x")
            .expect("write");
        // A crash: the temporary file is left behind.
        let (_, left) = ours.temp.keep().expect("keep");
        assert!(left.exists());
        assert_eq!(storage.remove_stale_partials().expect("removes"), 1);
        assert!(!left.exists());
        assert!(theirs.temp.path().exists());
        assert_eq!(storage.list().expect("list"), vec!["kept.txt".to_owned()]);
    }

    /// A full disk and a folder in the way get statuses that say what happened.
    #[test]
    fn storage_statuses_name_the_cause() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(storage_status(&full).code(), tonic::Code::ResourceExhausted);
        assert!(storage_status(&full).message().contains("no space left"));
        let folder = io::Error::from(io::ErrorKind::IsADirectory);
        assert_eq!(
            storage_status(&folder).code(),
            tonic::Code::FailedPrecondition
        );
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(storage_status(&other).code(), tonic::Code::Internal);
    }

    fn name_ok(raw: &str) -> SafeFileName {
        safe_file_name(raw).expect("valid name")
    }
}
