//! Secrets, and keeping them out of what others can read.
//!
//! serfnode's own secrets — the gossip key and keyring, the RPC key, each
//! child's token — are never shown: not in any inspect a file serves, not
//! in the environment of anything it starts. [`take_env`] takes one out of
//! the process's environment, scrubbing its bytes from the environment
//! block the kernel shows as `/proc/PID/environ` (unsetting a variable only
//! drops the pointer to them). [`Redactor`] prepares an inspect for the
//! files: every occurrence of a known secret replaced, and the values of
//! environment variables whose names look secret (`*KEY*`, `*SECRET*`,
//! `*TOKEN*`, `*PASSWORD*`, any case) replaced too, unless the reader may
//! see them (a child with `show_secrets: true`).

use serde_json::Value;

use crate::cluster::keys::KEY_ENV;
use crate::surface::restrict::TOKEN_ENV;

/// What a redacted value reads as.
pub(crate) const REDACTED: &str = "<redacted>";

/// Name parts that make an environment variable's value secret.
const SECRET_NAMES: [&str; 4] = ["KEY", "SECRET", "TOKEN", "PASSWORD"];

/// Variables only serfnode uses, whose values are never shown.
const OWN_ENV: [&str; 2] = [TOKEN_ENV, KEY_ENV];

/// Whether a variable named `name` holds a secret by its name.
pub(crate) fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAMES.iter().any(|s| upper.contains(s))
}

/// The value of variable `name`, taken out of this process's environment:
/// its bytes in the environment block overwritten, then the variable
/// unset. Call it before any other thread exists (the environment is not
/// locked against concurrent readers).
pub fn take_env(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    let prefix = format!("{name}=");
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: single-threaded (see above); `environ` is the NULL-terminated
    // array of NUL-terminated strings the C library keeps, each writable
    // (the initial block is the process's stack, set ones are heap copies),
    // and the writes stay inside each string's own bytes.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if bytes.starts_with(prefix.as_bytes()) {
                let value_len = bytes.len() - prefix.len();
                std::ptr::write_bytes((*entry).add(prefix.len()), 0, value_len);
            }
            entry = entry.add(1);
        }
    }
    std::env::remove_var(name);
    value
}

/// Prepares inspects for the files: serfnode's own secrets out, and the
/// secret-looking environment values unless shown.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    /// Values never shown wherever they appear (the gossip key and the
    /// keyring's keys, the RPC key).
    known: Vec<String>,
}

impl Redactor {
    /// Never shows `known` (empty strings and very short values, which
    /// would redact innocent text, are ignored).
    pub fn new(known: impl IntoIterator<Item = String>) -> Redactor {
        Redactor {
            known: known.into_iter().filter(|k| k.len() >= 8).collect(),
        }
    }

    /// `inspect` as a reader may see it: every known secret replaced in
    /// every string, serfnode's own variables and (unless `show`) every
    /// variable whose name looks secret with their values replaced.
    pub fn redact(&self, inspect: &Value, show: bool) -> Value {
        let mut v = inspect.clone();
        self.scrub_known(&mut v);
        let env = v.get_mut("Config").and_then(|c| c.get_mut("Env"));
        if let Some(env) = env.and_then(Value::as_array_mut) {
            for e in env.iter_mut() {
                let Some((name, value)) = e.as_str().and_then(|s| s.split_once('=')) else {
                    continue;
                };
                let own = OWN_ENV.contains(&name);
                if value != REDACTED && (own || (!show && looks_secret(name))) {
                    *e = Value::String(format!("{name}={REDACTED}"));
                }
            }
        }
        v
    }

    fn scrub_known(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                for k in &self.known {
                    if s.contains(k.as_str()) {
                        *s = s.replace(k.as_str(), REDACTED);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.scrub_known(i)),
            Value::Object(map) => map.values_mut().for_each(|i| self.scrub_known(i)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_that_look_secret() {
        for name in [
            "DB_PASSWORD",
            "api_token",
            "AWS_SECRET_ACCESS_KEY",
            "SshKey",
            "KEY",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["PATH", "HOME", "ROLE", "PEER", "LOG_LEVEL"] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn inspects_lose_known_secrets_always_and_secret_looking_values_unless_shown() {
        let r = Redactor::new([
            "gossip-key-value".to_string(),
            String::new(),
            "short".into(),
        ]);
        let inspect = json!({
            "Config": {
                "Env": ["PATH=/bin", "DB_PASSWORD=hunter22", "SERF_ENCRYPT_KEY=gossip-key-value",
                        "COPY=x gossip-key-value y", "SERFNODE_CHILD_TOKEN=abc", "NOVALUE", "short=1"],
                "Cmd": ["run", "--key=gossip-key-value"],
            },
            "Name": "/p",
        });
        let hidden = r.redact(&inspect, false);
        assert_eq!(
            hidden["Config"]["Env"],
            json!([
                "PATH=/bin",
                "DB_PASSWORD=<redacted>",
                "SERF_ENCRYPT_KEY=<redacted>",
                "COPY=x <redacted> y",
                "SERFNODE_CHILD_TOKEN=<redacted>",
                "NOVALUE",
                "short=1"
            ])
        );
        assert_eq!(hidden["Config"]["Cmd"], json!(["run", "--key=<redacted>"]));
        let shown = r.redact(&inspect, true);
        assert_eq!(
            shown["Config"]["Env"],
            json!([
                "PATH=/bin",
                "DB_PASSWORD=hunter22",
                "SERF_ENCRYPT_KEY=<redacted>",
                "COPY=x <redacted> y",
                "SERFNODE_CHILD_TOKEN=<redacted>",
                "NOVALUE",
                "short=1"
            ])
        );
        assert_eq!(shown["Name"], "/p");
        assert_eq!(r.redact(&json!(null), false), json!(null));
    }

    #[test]
    fn a_taken_variable_leaves_no_byte_in_the_environment_block() {
        // The test binary's own environment: set, then taken.
        std::env::set_var("SERFNODE_TEST_TAKEN", "s3cr3t-value");
        assert_eq!(
            take_env("SERFNODE_TEST_TAKEN").as_deref(),
            Some("s3cr3t-value")
        );
        assert!(std::env::var("SERFNODE_TEST_TAKEN").is_err());
        assert_eq!(take_env("SERFNODE_TEST_TAKEN"), None);
    }
}
