//! Where a target's signing keys live, and how replicas are told about them.
//!
//! A store holds at most three keys: the primary (signs and verifies), a
//! pending one (staged: verifies only) and a previous one (promoted away:
//! verifies only). Its contents alone say which phase a rotation is in, so
//! a run that died between changing the store and saving the rotation state
//! is recovered from the store.
//!
//! Key values exist in memory as [`Secret`], which has no `Display` and
//! whose `Debug` shows the fingerprint only.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::rotation::Phase;
use crate::CommandError;

/// Bytes of randomness in a generated key.
pub const KEY_BYTES: usize = 32;
/// File names of the file store, inside the target's state directory.
pub const PRIMARY_FILE: &str = "signing-key";
pub const PENDING_FILE: &str = "signing-key.pending";
pub const PREVIOUS_FILE: &str = "signing-key.previous";

/// A key as the service reads it (`hex:` and 64 hex digits, or any text
/// `VGI_SIGNING_KEY` accepts).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into().trim_end_matches(['\n', '\r']).to_string())
    }

    /// 32 bytes from the operating system's CSPRNG, as `hex:` text.
    pub fn generate() -> Result<Secret, CommandError> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|error| {
            CommandError::new(
                format!("failed to generate the signing key: {error}"),
                "the system's random source failed; try again",
                1,
            )
        })?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Secret(format!("hex:{hex}")))
    }

    /// The value, for a store or a replica's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The fingerprint replicas report on `/healthz` (not secret).
    pub fn fingerprint(&self) -> String {
        let bytes =
            kit_service::config::decode_key(&self.0).unwrap_or_else(|_| self.0.as_bytes().to_vec());
        kit_service::token::SigningKey::new(bytes).fingerprint()
    }
}

/// What a store holds now.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub primary: Secret,
    pub pending: Option<Secret>,
    pub previous: Option<Secret>,
}

impl KeySet {
    /// The phase the store's contents mean.
    pub fn phase(&self) -> Phase {
        if self.pending.is_some() {
            Phase::Staged
        } else if self.previous.is_some() {
            Phase::Promoted
        } else {
            Phase::Idle
        }
    }
}

/// A key as a replica gets it: a file it reads at start, or the value itself
/// (platforms that only take environment variables, such as Lambda).
#[derive(Debug, Clone)]
pub enum KeyRef {
    File(PathBuf),
    Value(Secret),
}

/// The keys one replica runs with: `primary` signs, `verify` only verifies.
#[derive(Debug, Clone)]
pub struct ReplicaKeys {
    pub primary: KeyRef,
    pub verify: Vec<KeyRef>,
    /// Fingerprints of primary and verify keys, for progress lines.
    pub primary_fingerprint: String,
    pub verify_fingerprints: Vec<String>,
}

impl ReplicaKeys {
    /// kit-service's key variables: `Some` sets, `None` removes (so a stale
    /// value from the parent environment never leaks into a replica).
    pub fn env(&self) -> Vec<(&'static str, Option<String>)> {
        let mut vars = Vec::new();
        match &self.primary {
            KeyRef::File(path) => {
                vars.push(("VGI_SIGNING_KEY_FILE", Some(path.display().to_string())));
                vars.push(("VGI_SIGNING_KEY", None));
            }
            KeyRef::Value(secret) => {
                vars.push(("VGI_SIGNING_KEY", Some(secret.expose().to_string())));
                vars.push(("VGI_SIGNING_KEY_FILE", None));
            }
        }
        let files: Vec<String> = self
            .verify
            .iter()
            .filter_map(|k| match k {
                KeyRef::File(path) => Some(path.display().to_string()),
                KeyRef::Value(_) => None,
            })
            .collect();
        let values: Vec<&str> = self
            .verify
            .iter()
            .filter_map(|k| match k {
                KeyRef::Value(secret) => Some(secret.expose()),
                KeyRef::File(_) => None,
            })
            .collect();
        vars.push((
            "VGI_SIGNING_KEY_PREVIOUS_FILE",
            (!files.is_empty()).then(|| files.join(",")),
        ));
        vars.push((
            "VGI_SIGNING_KEY_PREVIOUS",
            (!values.is_empty()).then(|| values.join(",")),
        ));
        vars
    }
}

/// A place keys live: files, a Kubernetes Secret, AWS Secrets Manager.
pub trait KeyStore {
    /// How messages name it: ``files in `.deploy-kit/ci/web` ``.
    fn describe(&self) -> String;
    fn read(&self) -> Result<KeySet, CommandError>;
    /// How replicas get `keys`: primary signs, pending and previous verify.
    fn replica_keys(&self, keys: &KeySet) -> ReplicaKeys;
    /// Adds `new` as the pending key.
    fn stage(&mut self, new: &Secret) -> Result<(), CommandError>;
    /// Pending becomes primary, primary becomes previous.
    fn promote(&mut self) -> Result<(), CommandError>;
    /// Drops the previous key.
    fn retire(&mut self) -> Result<(), CommandError>;
}

/// Builds [`ReplicaKeys`] from a key set, with each key turned into a ref.
pub fn replica_keys_with(keys: &KeySet, to_ref: impl Fn(&Secret, &str) -> KeyRef) -> ReplicaKeys {
    let mut verify = Vec::new();
    let mut verify_fingerprints = Vec::new();
    if let Some(pending) = &keys.pending {
        verify.push(to_ref(pending, PENDING_FILE));
        verify_fingerprints.push(pending.fingerprint());
    }
    if let Some(previous) = &keys.previous {
        verify.push(to_ref(previous, PREVIOUS_FILE));
        verify_fingerprints.push(previous.fingerprint());
    }
    ReplicaKeys {
        primary: to_ref(&keys.primary, PRIMARY_FILE),
        verify,
        primary_fingerprint: keys.primary.fingerprint(),
        verify_fingerprints,
    }
}

/// `VGI_SIGNING_KEY_PREVIOUS_FILE` for a replica whose primary key is
/// `key_file` in a [`FileKeyStore`] directory: the pending and previous keys
/// beside it that a rotation (`deploy-kit secrets rotate`) left, which verify
/// too; `None` outside a rotation.
pub fn verify_key_files(key_file: &Path) -> Option<String> {
    let dir = key_file.parent()?;
    let files: Vec<String> = [PENDING_FILE, PREVIOUS_FILE]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    (!files.is_empty()).then(|| files.join(","))
}

/// Keys as 0600 files in a directory (`up local`, process and compose targets);
/// replicas read them through `VGI_SIGNING_KEY_FILE` and
/// `VGI_SIGNING_KEY_PREVIOUS_FILE`.
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    pub dir: PathBuf,
}

impl FileKeyStore {
    pub fn new(dir: impl Into<PathBuf>) -> FileKeyStore {
        FileKeyStore { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_one(&self, name: &str) -> Result<Option<Secret>, CommandError> {
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Ok(None),
            Ok(text) => Ok(Some(Secret::new(text))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(CommandError::new(
                format!("failed to read `{}`: {error}", path.display()),
                "check the file's permissions (deploy-kit writes key files with mode 0600)",
                1,
            )),
        }
    }

    fn write(&self, name: &str, secret: &Secret) -> Result<(), CommandError> {
        let path = self.path(name);
        write_atomically(&path, format!("{}\n", secret.expose()).as_bytes(), 0o600).map_err(
            |error| {
                CommandError::new(
                    format!("failed to write `{}`: {error}", path.display()),
                    "check that the directory is writable",
                    1,
                )
            },
        )
    }

    fn remove(&self, name: &str) -> Result<(), CommandError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(CommandError::new(
                format!("failed to remove `{}`: {error}", path.display()),
                "check that the directory is writable",
                1,
            )),
        }
    }
}

impl KeyStore for FileKeyStore {
    fn describe(&self) -> String {
        format!("key files in `{}`", self.dir.display())
    }

    fn read(&self) -> Result<KeySet, CommandError> {
        let primary = self.read_one(PRIMARY_FILE)?.ok_or_else(|| {
            CommandError::new(
                format!(
                    "no signing key at `{}`",
                    self.path(PRIMARY_FILE).display()
                ),
                "run `deploy-kit up local` (or `up` for the target) once to make the key, then rotate it",
                2,
            )
        })?;
        let mut pending = self.read_one(PENDING_FILE)?;
        // A promote that died after writing the new primary: finish it.
        if pending.as_ref() == Some(&primary) {
            pending = None;
        }
        let previous = self.read_one(PREVIOUS_FILE)?;
        Ok(KeySet {
            primary,
            pending,
            previous,
        })
    }

    fn replica_keys(&self, keys: &KeySet) -> ReplicaKeys {
        replica_keys_with(keys, |_, name| KeyRef::File(self.path(name)))
    }

    fn stage(&mut self, new: &Secret) -> Result<(), CommandError> {
        self.write(PENDING_FILE, new)
    }

    /// Each write leaves a store every replica can start from: previous is
    /// written before the primary is replaced, pending is removed last.
    fn promote(&mut self) -> Result<(), CommandError> {
        let keys = self.read()?;
        let Some(pending) = keys.pending else {
            return Err(CommandError::new(
                format!("no staged key in {}", self.describe()),
                "stage one first: `deploy-kit secrets rotate --phase stage`",
                2,
            ));
        };
        self.write(PREVIOUS_FILE, &keys.primary)?;
        self.write(PRIMARY_FILE, &pending)?;
        self.remove(PENDING_FILE)
    }

    fn retire(&mut self) -> Result<(), CommandError> {
        self.remove(PREVIOUS_FILE)
    }
}

/// Writes `bytes` to a temp file with `mode` (0600 for keys, from creation
/// on), fsyncs and renames it over `path`: readers see the old or the new
/// file, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::generate().unwrap();
        assert!(secret.expose().starts_with("hex:"));
        assert_eq!(secret.expose().len(), 4 + 2 * KEY_BYTES);
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&secret.expose()[4..]), "{shown}");
        assert_eq!(shown, format!("Secret({})", secret.fingerprint()));
        assert_ne!(Secret::generate().unwrap(), secret);
    }

    #[test]
    fn file_store_walks_the_phases() {
        let dir = tempfile::tempdir().unwrap();
        let old = Secret::generate().unwrap();
        write_atomically(
            &dir.path().join(PRIMARY_FILE),
            old.expose().as_bytes(),
            0o600,
        )
        .unwrap();
        let mut store = FileKeyStore::new(dir.path());
        assert_eq!(store.read().unwrap().phase(), Phase::Idle);
        let new = Secret::generate().unwrap();
        store.stage(&new).unwrap();
        let staged = store.read().unwrap();
        assert_eq!((staged.phase(), &staged.primary), (Phase::Staged, &old));
        let env = store.replica_keys(&staged).env();
        assert!(env.contains(&(
            "VGI_SIGNING_KEY_PREVIOUS_FILE",
            Some(dir.path().join(PENDING_FILE).display().to_string())
        )));
        assert!(env.contains(&("VGI_SIGNING_KEY", None)));
        store.promote().unwrap();
        let promoted = store.read().unwrap();
        assert_eq!(promoted.phase(), Phase::Promoted);
        assert_eq!(
            (&promoted.primary, promoted.previous.as_ref()),
            (&new, Some(&old))
        );
        store.retire().unwrap();
        let idle = store.read().unwrap();
        assert_eq!((idle.phase(), &idle.primary), (Phase::Idle, &new));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PRIMARY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
