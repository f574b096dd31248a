//! The API-key entry format, defined once for the service that authenticates
//! with it (`KIT_API_KEYS`, `KIT_API_KEYS_FILE`) and for deploy-kit, which
//! checks the secret it mounts before a deploy.
//!
//! An entry is `name=key`, optionally followed by `;`-separated attributes:
//!
//! ```text
//! ci=3f9a...                                         # any protocol and method, no expiry
//! nightly=77c1...;expires=2027-01-01                 # refused from 2027-01-01T00:00:00Z
//! reports=9e02...;expires=2026-12-31T18:00:00Z;scopes=kit.Demo.v1/add kit.Demo.v1/count
//! ```
//!
//! Entries are separated by commas or newlines; `#` starts a comment line.
//! `expires` is a UTC date (the key is refused from its first second) or an
//! RFC 3339 UTC time ending in `Z`. `scopes` is a space-separated list of
//! `protocol/method`, `protocol/*` or `*`; without it a key may call
//! everything. A key can contain neither `,` nor `;` (nor start or end with
//! whitespace), which the keys deploy-kit and `openssl rand -hex` make never do.
//!
//! ```
//! use kit_checks::api_keys::{parse, Scope};
//!
//! let entries = parse("ci=k1\nreports=k2;expires=2027-01-01;scopes=kit.Demo.v1/add").unwrap();
//! assert_eq!(entries[0].expires, None);
//! assert!(entries[0].allows("kit.Demo.v1", "greet"));
//! assert_eq!(entries[1].expires.unwrap().to_string(), "2027-01-01T00:00:00Z");
//! assert!(entries[1].allows("kit.Demo.v1", "add"));
//! assert!(!entries[1].allows("kit.Demo.v1", "greet"));
//! assert_eq!(entries[1].scopes, vec![Scope::Method("kit.Demo.v1".into(), "add".into())]);
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::date::Date;

/// One parsed `name=key[;attribute...]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The caller identity the key stands for; never secret.
    pub name: String,
    /// The key itself.
    pub key: String,
    /// From this instant on the key is refused (`expired_credential`).
    pub expires: Option<Expiry>,
    /// What the key may call; empty means everything.
    pub scopes: Vec<Scope>,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("expires", &self.expires)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl KeyEntry {
    /// Whether the key may call `protocol`'s `method` (scopes only; expiry apart).
    pub fn allows(&self, protocol: &str, method: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s.allows(protocol, method))
    }

    /// Whether the key has expired at `now_unix_seconds`.
    pub fn expired_at(&self, now_unix_seconds: i64) -> bool {
        self.expires
            .is_some_and(|expiry| now_unix_seconds >= expiry.unix_seconds())
    }
}

/// An instant in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry {
    unix_seconds: i64,
}

impl Expiry {
    /// The instant as seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(self) -> i64 {
        self.unix_seconds
    }

    /// The UTC date the instant falls on.
    pub fn date(self) -> Date {
        Date::from_days_since_epoch(self.unix_seconds.div_euclid(86_400))
    }

    /// Parses `YYYY-MM-DD` (its first second) or `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn parse(text: &str) -> Option<Expiry> {
        let text = text.trim();
        let (date, time) = match text.split_once(['T', 't']) {
            Some((date, time)) => (date, Some(time)),
            None => (text, None),
        };
        let days = Date::parse(date).ok()?.days_since_epoch();
        let seconds = match time {
            None => 0,
            Some(time) => {
                let time = time.strip_suffix(['Z', 'z'])?;
                let parts: Vec<&str> = time.split(':').collect();
                let [h, m, s] = parts.as_slice() else {
                    return None;
                };
                if [h, m, s].iter().any(|p| p.len() != 2) {
                    return None;
                }
                let (h, m, s): (i64, i64, i64) =
                    (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
                if h > 23 || m > 59 || s > 59 {
                    return None;
                }
                h * 3600 + m * 60 + s
            }
        };
        Some(Expiry {
            unix_seconds: days * 86_400 + seconds,
        })
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.unix_seconds.rem_euclid(86_400);
        write!(
            f,
            "{}T{:02}:{:02}:{:02}Z",
            self.date(),
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}

/// What a scoped key may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `*`: everything.
    All,
    /// `protocol/*`: every method of one protocol.
    Protocol(String),
    /// `protocol/method`.
    Method(String, String),
}

impl Scope {
    /// Parses `*`, `protocol/*` or `protocol/method`.
    pub fn parse(text: &str) -> Option<Scope> {
        if text == "*" {
            return Some(Scope::All);
        }
        let (protocol, method) = text.split_once('/')?;
        if !valid_protocol(protocol) {
            return None;
        }
        if method == "*" {
            return Some(Scope::Protocol(protocol.to_string()));
        }
        valid_method(method).then(|| Scope::Method(protocol.to_string(), method.to_string()))
    }

    /// Whether this scope covers `protocol`'s `method`.
    pub fn allows(&self, protocol: &str, method: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Protocol(p) => p == protocol,
            Scope::Method(p, m) => p == protocol && m == method,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Protocol(p) => write!(f, "{p}/*"),
            Scope::Method(p, m) => write!(f, "{p}/{m}"),
        }
    }
}

/// vgi-rpc's protocol-name charset, `^[A-Za-z_][A-Za-z0-9_.]*$`.
fn valid_protocol(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn valid_method(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a list of entries was refused. Entries are counted from 1, comments
/// and blank lines left out; no message contains a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyEntryError {
    #[error("entry {0} is not `name=key`")]
    Shape(usize),
    #[error("entry {index} (`{name}`) has an empty name or key")]
    Empty { index: usize, name: String },
    #[error("key name `{0}` appears twice")]
    DuplicateName(String),
    #[error("keys `{0}` and `{1}` are identical")]
    DuplicateKey(String, String),
    #[error(
        "key `{name}`: unknown attribute `{attribute}` (known: `expires=`, `scopes=`; a key cannot contain `;`)"
    )]
    UnknownAttribute { name: String, attribute: String },
    #[error("key `{name}`: attribute `{attribute}` appears twice")]
    DuplicateAttribute { name: String, attribute: String },
    #[error(
        "key `{name}`: `expires={value}` is not a UTC date `YYYY-MM-DD` or time `YYYY-MM-DDTHH:MM:SSZ`"
    )]
    BadExpiry { name: String, value: String },
    #[error(
        "key `{name}`: scope `{value}` is not `*`, `protocol/*` or `protocol/method` (scopes are separated by spaces)"
    )]
    BadScope { name: String, value: String },
    #[error("key `{name}`: `scopes=` lists no scope")]
    NoScopes { name: String },
}

/// Parses entries separated by commas or newlines; `#` starts a comment line.
pub fn parse(text: &str) -> Result<Vec<KeyEntry>, KeyEntryError> {
    let mut entries: Vec<KeyEntry> = Vec::new();
    let mut names = BTreeSet::new();
    let lines = text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'));
    for (index, line) in lines.enumerate() {
        let index = index + 1;
        let mut parts = line.split(';');
        let head = parts.next().unwrap_or_default();
        let (name, key) = head.split_once('=').ok_or(KeyEntryError::Shape(index))?;
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || key.is_empty() {
            return Err(KeyEntryError::Empty {
                index,
                name: name.to_string(),
            });
        }
        if !names.insert(name.to_string()) {
            return Err(KeyEntryError::DuplicateName(name.to_string()));
        }
        if let Some(other) = entries.iter().find(|e| e.key == key) {
            return Err(KeyEntryError::DuplicateKey(
                other.name.clone(),
                name.to_string(),
            ));
        }
        let mut entry = KeyEntry {
            name: name.to_string(),
            key: key.to_string(),
            expires: None,
            scopes: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for attribute in parts {
            let (attribute_name, value) = attribute.split_once('=').unwrap_or((attribute, ""));
            let attribute_name = attribute_name.trim();
            let value = value.trim();
            let known = matches!(attribute_name, "expires" | "scopes");
            if !known {
                return Err(KeyEntryError::UnknownAttribute {
                    name: name.to_string(),
                    // Only the part before `=`: an unknown attribute may be
                    // the tail of a key that contains `;`.
                    attribute: if attribute_name.len() <= 16 {
                        attribute_name.to_string()
                    } else {
                        format!("{}...", attribute_name.chars().take(8).collect::<String>())
                    },
                });
            }
            if !seen.insert(attribute_name) {
                return Err(KeyEntryError::DuplicateAttribute {
                    name: name.to_string(),
                    attribute: attribute_name.to_string(),
                });
            }
            if attribute_name == "expires" {
                entry.expires =
                    Some(
                        Expiry::parse(value).ok_or_else(|| KeyEntryError::BadExpiry {
                            name: name.to_string(),
                            value: value.to_string(),
                        })?,
                    );
            } else {
                for scope in value.split_whitespace() {
                    entry.scopes.push(Scope::parse(scope).ok_or_else(|| {
                        KeyEntryError::BadScope {
                            name: name.to_string(),
                            value: scope.to_string(),
                        }
                    })?);
                }
                if entry.scopes.is_empty() {
                    return Err(KeyEntryError::NoScopes {
                        name: name.to_string(),
                    });
                }
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// What the doctor may know of a key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyFacts {
    pub name: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`, when the key has an expiry.
    pub expires: Option<String>,
    /// The key's scopes as written; empty means everything.
    pub scopes: Vec<String>,
}

impl From<&KeyEntry> for KeyFacts {
    fn from(entry: &KeyEntry) -> KeyFacts {
        KeyFacts {
            name: entry.name.clone(),
            expires: entry.expires.map(|e| e.to_string()),
            scopes: entry.scopes.iter().map(Scope::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_entries_keep_working() {
        let entries = parse("# comment\nci = k1\nops=k2\n").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "ci");
        assert_eq!(entries[0].key, "k1");
        assert!(entries[0].expires.is_none() && entries[0].scopes.is_empty());
        // A key may contain `=` (base64 padding).
        assert_eq!(parse("ci=YWJj==").unwrap()[0].key, "YWJj==");
    }

    #[test]
    fn expiry_and_scopes_parse() {
        let entry = &parse("r=k;expires=2026-12-31T18:30:05Z;scopes=a.B.v1/* c/d").unwrap()[0];
        assert_eq!(entry.expires.unwrap().to_string(), "2026-12-31T18:30:05Z");
        assert!(entry.allows("a.B.v1", "anything"));
        assert!(entry.allows("c", "d"));
        assert!(!entry.allows("c", "e"));
        let at = entry.expires.unwrap().unix_seconds();
        assert!(!entry.expired_at(at - 1));
        assert!(entry.expired_at(at));
        let day = &parse("r=k;expires=1970-01-02").unwrap()[0];
        assert_eq!(day.expires.unwrap().unix_seconds(), 86_400);
    }

    #[test]
    fn bad_entries_name_the_key_never_the_secret() {
        let error = |text: &str| parse(text).unwrap_err();
        assert_eq!(error("ci=abc,ops"), KeyEntryError::Shape(2));
        assert_eq!(error("a=1,a=2"), KeyEntryError::DuplicateName("a".into()));
        assert_eq!(
            error("a=1,b=1"),
            KeyEntryError::DuplicateKey("a".into(), "b".into())
        );
        for (text, expected) in [
            ("a=s3cret;expires=2026-13-01", "`expires=2026-13-01`"),
            (
                "a=s3cret;expires=2026-01-01T10:00:00",
                "`expires=2026-01-01T10:00:00`",
            ),
            ("a=s3cret;scopes=kit.Demo.v1", "scope `kit.Demo.v1`"),
            ("a=s3cret;scopes=", "lists no scope"),
            ("a=s3cret;scope=x/y", "unknown attribute `scope`"),
            (
                "a=s3cret;expires=2026-01-01;expires=2027-01-01",
                "appears twice",
            ),
        ] {
            let message = error(text).to_string();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains("key `a`"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        assert!(
            !format!("{:?}", parse("a=s3cret").unwrap()).contains("s3cret"),
            "Debug shows the key"
        );
    }
}
