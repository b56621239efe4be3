//! Gossip encryption keys: the key (or keyring file) the agent is started
//! with, validated here and handed to the agent through its config file
//! (never its command line), and what the daemon asks the agent about them.
//! The `serfnode keys` command that rotates them is [`crate::operator::keys`].
//!
//! Serf's rules, as its agent applies them: a key is base64 of 16, 24 or 32
//! bytes (AES-128/192/256); a keyring file is a JSON list of such keys, the
//! first one primary, which the agent rewrites after each rotation; and the
//! agent refuses a key and a keyring file together, or a keyring file that
//! does not exist. So when both are given, the keyring file wins, and it is
//! created from the key when it is missing.

use std::io::Write;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::cluster::rpc::Client;

/// The variable holding the key itself (taken out of the environment at
/// start, so handlers and the agent do not inherit it).
pub const KEY_ENV: &str = "SERF_ENCRYPT_KEY";

/// A string that `Debug` does not show.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `origin` names where the key came from: a file or a variable.
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error("{origin}: {source}")]
    Io {
        origin: String,
        source: std::io::Error,
    },
    #[error("both --encrypt-key-file (SERF_ENCRYPT_KEY_FILE) and SERF_ENCRYPT_KEY are set: give the key once")]
    TwoKeys,
    #[error("keyring file {0} does not exist and no key was given to create it: set --encrypt-key-file (SERF_ENCRYPT_KEY_FILE) or SERF_ENCRYPT_KEY")]
    NoKeyring(String),
}

fn invalid(origin: &str, problem: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        origin: origin.to_owned(),
        problem: problem.into(),
    }
}

/// Checks that `text` (surrounding white space ignored) is a Serf key: base64
/// of 16, 24 or 32 bytes. Returns it trimmed.
pub(crate) fn check_key(text: &str, origin: &str) -> Result<String, KeyError> {
    let key = text.trim();
    if key.is_empty() {
        return Err(invalid(
            origin,
            "empty; expected a base64 key of 16, 24 or 32 bytes (make one with: head -c32 /dev/urandom | base64)",
        ));
    }
    let bytes = decode_base64(key).map_err(|e| invalid(origin, format!("not base64: {e}")))?;
    if ![16, 24, 32].contains(&bytes.len()) {
        return Err(invalid(
            origin,
            format!(
                "the key is {} bytes; it must be 16, 24 or 32 (make one with: head -c32 /dev/urandom | base64)",
                bytes.len()
            ),
        ));
    }
    Ok(key.to_owned())
}

/// Standard base64 with padding, as Go's `base64.StdEncoding` reads it.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(format!("length {} is not a multiple of 4", b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = (i + 1) * 4 == b.len();
        let mut n = 0u32;
        let mut pad = 0;
        for (j, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && j >= 2 => {
                    pad += 1;
                    0
                }
                _ => {
                    return Err(format!(
                        "unexpected {:?} at offset {}",
                        char::from(c),
                        i * 4 + j
                    ))
                }
            };
            if pad > 0 && c != b'=' {
                return Err(format!("unexpected {:?} after padding", char::from(c)));
            }
            n = n << 6 | u32::from(v);
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Ok(out)
}

/// Reads and checks a keyring file; `Ok(None)` when it does not exist (or
/// is empty, as a file made with `touch`).
pub(crate) fn read_keyring(path: &Path) -> Result<Option<Vec<String>>, KeyError> {
    let origin = format!("keyring file {}", path.display());
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyError::Io { origin, source }),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let keys: Vec<String> = serde_json::from_str(&text)
        .map_err(|e| invalid(&origin, format!("not a JSON list of base64 keys: {e}")))?;
    if keys.is_empty() {
        return Err(invalid(&origin, "holds no key"));
    }
    for (i, key) in keys.iter().enumerate() {
        check_key(key, &format!("{origin}, key {}", i + 1))?;
    }
    Ok(Some(keys))
}

/// The gossip encryption this node's agent is started with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encryption {
    /// The key given by file or environment (checked).
    pub key: Option<Secret>,
    /// Where the key came from, for messages.
    pub key_origin: String,
    /// Serf's keyring file (made from `key` when missing).
    pub keyring_file: Option<PathBuf>,
}

impl Encryption {
    /// `key_file`: `--encrypt-key-file`; `key_env`: the value of
    /// SERF_ENCRYPT_KEY. Checks the key, and the keyring file if it exists.
    pub fn resolve(
        key_file: Option<&Path>,
        key_env: Option<&Secret>,
        keyring_file: Option<PathBuf>,
    ) -> Result<Encryption, KeyError> {
        let (key, key_origin) = match (key_file, key_env) {
            (Some(_), Some(_)) => return Err(KeyError::TwoKeys),
            (Some(path), None) => {
                let origin = format!("encryption key file {}", path.display());
                let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                    origin: origin.clone(),
                    source,
                })?;
                (Some(Secret(check_key(&text, &origin)?)), origin)
            }
            (None, Some(Secret(text))) => {
                let origin = KEY_ENV.to_owned();
                (Some(Secret(check_key(text, &origin)?)), origin)
            }
            (None, None) => (None, String::new()),
        };
        if let Some(path) = &keyring_file {
            if read_keyring(path)?.is_none() && key.is_none() {
                return Err(KeyError::NoKeyring(path.display().to_string()));
            }
        }
        Ok(Encryption {
            key,
            key_origin,
            keyring_file,
        })
    }

    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.keyring_file.is_some()
    }

    /// The agent config entries: `keyring_file` (written from the key first
    /// if it does not exist yet), else `encrypt_key`, else none.
    pub fn agent_entries(&self) -> Result<Map<String, Value>, KeyError> {
        let mut entries = Map::new();
        match (&self.keyring_file, &self.key) {
            (Some(path), key) => {
                match (read_keyring(path)?, key) {
                    (Some(keys), Some(Secret(key))) if !keys.contains(key) => tracing::warn!(
                        "keyring file {} exists and is used as it is: the key from {} is not in it (rotated away?)",
                        path.display(),
                        self.key_origin
                    ),
                    (Some(keys), _) => tracing::info!(
                        keys = keys.len(),
                        "gossip encrypted with the keyring in {}",
                        path.display()
                    ),
                    (None, Some(Secret(key))) => {
                        write_keyring(path, std::slice::from_ref(key)).map_err(|source| {
                            KeyError::Io {
                                origin: format!("keyring file {}: create it", path.display()),
                                source,
                            }
                        })?;
                        tracing::info!(
                            "gossip encrypted: created keyring file {} with the key from {}",
                            path.display(),
                            self.key_origin
                        );
                    }
                    (None, None) => return Err(KeyError::NoKeyring(path.display().to_string())),
                }
                entries.insert(
                    "keyring_file".into(),
                    Value::from(path.to_string_lossy().into_owned()),
                );
            }
            (None, Some(Secret(key))) => {
                tracing::info!(
                    "gossip encrypted with the key from {}; without --keyring-file, key rotations are lost when the agent restarts",
                    self.key_origin
                );
                entries.insert("encrypt_key".into(), Value::from(key.clone()));
            }
            (None, None) => {}
        }
        Ok(entries)
    }
}

fn write_keyring(path: &Path, keys: &[String]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let body = serde_json::to_vec_pretty(keys).expect("json");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .or_else(|e| {
            // An empty file stands for a missing one: replace it.
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(path)
            } else {
                Err(e)
            }
        })?;
    f.write_all(&body)
}

/// Logged at start when gossip is not encrypted (`attached`: by an agent
/// started by someone else, with `--attach`).
pub(crate) fn warn_unencrypted(attached: bool) {
    const RISK: &str =
        "anyone who reaches the gossip port can join the cluster and read its traffic";
    if attached {
        tracing::warn!(
            "gossip is not encrypted: {RISK}; start the agent with `encrypt_key` or `keyring_file` in its config file"
        );
    } else {
        tracing::warn!(
            "gossip is not encrypted: {RISK}; give a key with --encrypt-key-file PATH (SERF_ENCRYPT_KEY_FILE) \
             or SERF_ENCRYPT_KEY, or a keyring with --keyring-file PATH (SERF_KEYRING_FILE)"
        );
    }
}

/// Whether an agent encrypts its gossip, from its `stats` (`serf.encrypted`).
pub(crate) async fn agent_encrypted(client: &Client) -> Option<bool> {
    let stats = client.stats().await.ok()?;
    stats.get("serf")?.get("encrypted")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serfnode_testkit::keys::base64;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode_base64(&base64(&bytes)).unwrap(), bytes, "{len}");
        }
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("aGVsbG8").is_err());
        assert!(decode_base64("aG=sbG8=").is_err());
        assert!(decode_base64("aGVs!G8=").is_err());
        assert!(decode_base64("a===").is_err());
    }

    #[test]
    fn keys_are_16_24_or_32_bytes_and_errors_name_their_origin() {
        for len in [16, 24, 32] {
            let key = base64(&vec![7u8; len]);
            assert_eq!(check_key(&format!(" {key}\n"), "x").unwrap(), key);
        }
        let err = check_key(&base64(&[1u8; 20]), "SERF_ENCRYPT_KEY").unwrap_err();
        assert_eq!(
            err.to_string(),
            "SERF_ENCRYPT_KEY: the key is 20 bytes; it must be 16, 24 or 32 (make one with: head -c32 /dev/urandom | base64)"
        );
        let err = check_key("not a key", "encryption key file /k").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("encryption key file /k: not base64:"),
            "{err}"
        );
        assert!(check_key("  \n", "f")
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn resolving_checks_the_key_file_and_the_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let key = base64(&[9u8; 32]);
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let e = Encryption::resolve(Some(&key_file), None, None).unwrap();
        assert_eq!(e.key, Some(Secret(key.clone())));
        assert!(e.enabled());
        assert_eq!(e.agent_entries().unwrap()["encrypt_key"], key.as_str());

        let none = Encryption::resolve(None, None, None).unwrap();
        assert!(!none.enabled());
        assert!(none.agent_entries().unwrap().is_empty());

        let two = Encryption::resolve(Some(&key_file), Some(&Secret(key.clone())), None);
        assert!(matches!(two, Err(KeyError::TwoKeys)));

        let missing = dir.path().join("nope");
        let err = Encryption::resolve(Some(&missing), None, None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("encryption key file {}: ", missing.display())));

        // A missing keyring needs a key to be made from.
        let ring = dir.path().join("sub/keyring.json");
        let err = Encryption::resolve(None, None, Some(ring.clone())).unwrap_err();
        assert!(matches!(err, KeyError::NoKeyring(_)), "{err}");
        let e = Encryption::resolve(None, Some(&Secret(key.clone())), Some(ring.clone())).unwrap();
        let entries = e.agent_entries().unwrap();
        assert_eq!(entries["keyring_file"], ring.to_str().unwrap());
        assert!(!entries.contains_key("encrypt_key"));
        assert_eq!(read_keyring(&ring).unwrap(), Some(vec![key.clone()]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ring).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // An existing keyring is used as it is, alone.
        let e = Encryption::resolve(None, None, Some(ring.clone())).unwrap();
        assert_eq!(e.agent_entries().unwrap().len(), 1);

        std::fs::write(&ring, r#"["short"]"#).unwrap();
        let err = Encryption::resolve(None, None, Some(ring.clone())).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "keyring file {}, key 1: not base64",
                ring.display()
            )),
            "{err}"
        );
        std::fs::write(&ring, "[]").unwrap();
        let err = Encryption::resolve(None, None, Some(ring.clone())).unwrap_err();
        assert!(err.to_string().ends_with("holds no key"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Secret("hush".into());
        assert!(!format!("{s:?}").contains("hush"));
    }
}
