//! A directory read from a JSON or TOML file that reloads when the file changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
#[cfg(feature = "tokio")]
use std::time::Duration;

use super::{Directory, DirectoryError, MemoryDirectory, SandboxEntry};
use crate::sandbox::SandboxKey;

/// The file's bytes as last applied.
type Seen = Mutex<Option<Vec<u8>>>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    sandboxes: Vec<SandboxEntry>,
}

/// A directory kept in a file: `.json` (`{"sandboxes": [..]}`) or `.toml` (`[[sandboxes]]`).
///
/// The file is read when the directory opens (an invalid file is an error then). Afterwards
/// [`watch`](Self::watch) polls it for changes; a change that does not parse is logged on target
/// `prodbox::directory` and the last good contents stay in force.
///
/// ```toml
/// [[sandboxes]]
/// key = "pr-42"
/// actor = "alice"
/// origin = "pr-42"
/// expires_at = "2026-12-01T00:00:00Z"
/// forks = { billing = "http://127.0.0.1:9001" }
/// ```
#[derive(Clone, Debug)]
pub struct FileDirectory {
    path: Arc<PathBuf>,
    entries: MemoryDirectory,
    seen: Arc<Seen>,
}

impl FileDirectory {
    /// Opens and reads `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DirectoryError> {
        let this = Self {
            path: Arc::new(path.as_ref().to_owned()),
            entries: MemoryDirectory::new(),
            seen: Arc::new(Mutex::new(None)),
        };
        this.reload()?;
        Ok(this)
    }

    /// Reads the file again if it changed; returns whether the entries changed.
    pub fn reload(&self) -> Result<bool, DirectoryError> {
        let path = self.path.display().to_string();
        let io = |source| DirectoryError::Io {
            path: path.clone(),
            source,
        };
        // Read and compare every time: the file is small, and modification times can repeat
        // (coarse clocks, `cp -p`, `rsync -t`), which must not hide a kill-switch change.
        let bytes = std::fs::read(&*self.path).map_err(io)?;
        let mut seen = match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.as_deref() == Some(bytes.as_slice()) {
            return Ok(false);
        }
        let entries = parse(&self.path, &bytes).map_err(|message| DirectoryError::Invalid {
            path: path.clone(),
            message,
        })?;
        self.entries.replace_all(entries);
        *seen = Some(bytes);
        Ok(true)
    }

    /// Polls the file every `interval` on the current Tokio runtime until the last clone of
    /// this directory is dropped.
    #[cfg(feature = "tokio")]
    pub fn watch(self, interval: Duration) -> Self {
        let weak = WeakFileDirectory {
            path: Arc::downgrade(&self.path),
            entries: self.entries.clone(),
            seen: Arc::downgrade(&self.seen),
        };
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(dir) = weak.upgrade() else { return };
                if let Err(error) = dir.reload() {
                    tracing::warn!(
                        target: "prodbox::directory",
                        %error,
                        "directory file not reloaded; the last good contents stay in force"
                    );
                }
            }
        });
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(feature = "tokio")]
struct WeakFileDirectory {
    path: std::sync::Weak<PathBuf>,
    entries: MemoryDirectory,
    seen: std::sync::Weak<Seen>,
}

#[cfg(feature = "tokio")]
impl WeakFileDirectory {
    fn upgrade(&self) -> Option<FileDirectory> {
        Some(FileDirectory {
            path: self.path.upgrade()?,
            entries: self.entries.clone(),
            seen: self.seen.upgrade()?,
        })
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<SandboxEntry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let format: FileFormat = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => toml::from_str(text).map_err(|e| e.to_string())?,
        Some("json") => serde_json::from_str(text).map_err(|e| e.to_string())?,
        other => return Err(format!("unknown extension {other:?}; use .json or .toml")),
    };
    let mut keys = std::collections::HashSet::new();
    for entry in &format.sandboxes {
        if !keys.insert(entry.key.clone()) {
            return Err(format!("sandbox {} is listed twice", entry.key));
        }
    }
    Ok(format.sandboxes)
}

impl Directory for FileDirectory {
    fn get(&self, key: &SandboxKey) -> Option<Arc<SandboxEntry>> {
        self.entries.get(key)
    }

    fn entries(&self) -> Vec<Arc<SandboxEntry>> {
        self.entries.entries()
    }

    fn generation(&self) -> Option<u64> {
        self.entries.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[tokio::test]
    async fn reloads_on_change_and_keeps_last_good_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandboxes.toml");
        std::fs::write(
            &path,
            "[[sandboxes]]\nkey = \"pr-1\"\nforks = { billing = \"http://127.0.0.1:1\" }\nexpires_at = \"2030-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let directory = FileDirectory::open(&path)
            .unwrap()
            .watch(Duration::from_millis(20));
        let key: SandboxKey = "pr-1".parse().unwrap();
        let entry = directory.get(&key).unwrap();
        assert_eq!(
            entry.fork_of("billing").map(ToString::to_string).as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert!(!entry.is_expired_at(SystemTime::now()));

        std::fs::write(&path, "[[sandboxes]]\nkey = \"pr-1\"\ndisabled = true\n").unwrap();
        wait_for(|| directory.get(&key).is_some_and(|e| e.disabled)).await;

        // A broken file is refused; the last good contents stay.
        std::fs::write(&path, "[[sandboxes]]\nkey = \"PR 1\"\n").unwrap();
        assert!(directory.reload().is_err());
        assert!(directory.get(&key).is_some_and(|e| e.disabled));

        // So is a file naming a fork address routing could not use (it used to load, and
        // every routed call fell back).
        std::fs::write(
            &path,
            "[[sandboxes]]\nkey = \"pr-1\"\nforks = { billing = \"127.0.0.1:9001\" }\n",
        )
        .unwrap();
        let error = directory.reload().unwrap_err();
        assert!(error.to_string().contains("127.0.0.1:9001"), "{error}");
        assert!(directory.get(&key).is_some_and(|e| e.disabled));
        // And one with a scheme no router speaks (HTTP used to put it on the request URI).
        std::fs::write(
            &path,
            "[[sandboxes]]\nkey = \"pr-1\"\nforks = { billing = \"grpc://fork:1\" }\n",
        )
        .unwrap();
        assert!(directory.reload().is_err());
        assert!(directory.get(&key).is_some_and(|e| e.disabled));
    }

    #[test]
    fn json_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(&path, r#"{"sandboxes":[{"key":"a","expires_at":1}]}"#).unwrap();
        let d = FileDirectory::open(&path).unwrap();
        assert!(
            d.get(&"a".parse().unwrap())
                .unwrap()
                .is_expired_at(SystemTime::now())
        );

        std::fs::write(&path, r#"{"sandboxes":[{"key":"a"},{"key":"a"}]}"#).unwrap();
        let err = FileDirectory::open(&path).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        std::fs::write(&path, r#"{"sandboxes":[{"key":"a","colour":"red"}]}"#).unwrap();
        assert!(FileDirectory::open(&path).is_err());
        assert!(FileDirectory::open(dir.path().join("missing.json")).is_err());
    }

    async fn wait_for(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met within 5 s");
    }
}
