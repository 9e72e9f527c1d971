//! Manifest signing keys: the operator's minisign secret key (Ed25519, the format the
//! reference `minisign` tool reads and writes), where it comes from, and the public
//! keys that verify what it signed.
//!
//! The secret key is operator material. It is read from a file or an environment
//! variable the operator names (`--signing-key`), held in memory only, handed to a
//! job's worker inside its credentials document (standard input, never argv, never the
//! database or NATS), and never printed: [`SigningKey`] and [`SigningKeyMaterial`]
//! debug-print as `[redacted]` (the crate's own `SecretKey` would print the key bytes).
//!
//! A signature's trusted comment names the job, the time and the SHA-256 of the
//! manifest JSON, so `minisign -V` vouches for the JSON too. Each key has minisign's
//! 8-byte key id (16 upper-case hex digits, as `minisign` prints it); retired public
//! keys stay published by id so old exports remain verifiable after a rotation.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Name of the signature written beside a manifest: `<manifest>.minisig`.
pub fn signature_name(manifest_txt: &str) -> String {
    format!("{manifest_txt}.minisig")
}

/// Where the console publishes the current public key.
pub const PUBLIC_KEY_PATH: &str = "/.well-known/portshift-signing-key.pub";
/// Where the console publishes every public key (current and retired) by key id:
/// `<this>/<KEY ID>.pub`; the folder itself lists them.
pub const PUBLIC_KEYS_DIR: &str = "/.well-known/portshift-signing-keys";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "the signing key reference {0:?} is not usable: give a file path, file:/path, or env:NAME (a variable holding the minisign secret key)"
    )]
    BadReference(String),
    #[error("could not read the signing key file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the environment variable {0} named by the signing key reference is not set or empty")]
    MissingEnv(String),
    #[error(
        "the signing key is not a usable minisign secret key ({0}). If it is password-protected, set PORTSHIFT_SIGNING_KEY_PASSWORD; make a new one with `portshift signing-key generate`"
    )]
    BadSecretKey(String),
    #[error(
        "{0:?} is not a minisign public key (expected the two lines `untrusted comment: ...` and the base64 key that `minisign -G` or `portshift signing-key public` writes)"
    )]
    BadPublicKey(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    Exists { path: String },
    #[error("could not write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the signature is not valid: {0}")]
    BadSignature(String),
}

/// Where the operator keeps the secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningKeyRef {
    File(PathBuf),
    /// An environment variable holding the whole secret key file's text.
    Env(String),
}

impl std::str::FromStr for SigningKeyRef {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(SigningError::BadReference(s.chars().take(40).collect()));
            }
            return Ok(Self::Env(name.to_string()));
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        // A pasted key (base64 or a whole key file) is not a path: refuse it without echo.
        if path.is_empty() || path.contains('\n') || path.starts_with("untrusted comment") {
            return Err(SigningError::BadReference("[not shown]".into()));
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

/// The secret key as it travels to a worker: the key file's text, and its password if
/// it has one. Deserialize-only (part of [`crate::secrets::Credentials`]); redacted.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyMaterial {
    pub secret_key: SecretString,
    #[serde(default)]
    pub password: Option<SecretString>,
}

impl fmt::Debug for SigningKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKeyMaterial([redacted])")
    }
}

/// The key material written back into a worker's credentials document (the scheduler's
/// resolved references, a role grant): borrowed, exposed only into the caller's
/// zeroed-on-drop buffer.
#[derive(serde::Serialize)]
pub struct ExposedSigningKey<'a> {
    pub secret_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<&'a str>,
}

impl ExposedSigningKey<'_> {
    /// Bytes of secret text (for sizing the buffer up front).
    pub fn secret_len(&self) -> usize {
        self.secret_key.len() + self.password.map_or(0, str::len)
    }
}

impl SigningKeyMaterial {
    /// The material as it goes into a worker's credentials document.
    pub fn exposed(&self) -> ExposedSigningKey<'_> {
        ExposedSigningKey {
            secret_key: self.secret_key.expose_secret(),
            password: self.password.as_ref().map(|p| p.expose_secret()),
        }
    }

    /// Reads the key a reference names; the password, if any, from
    /// `PORTSHIFT_SIGNING_KEY_PASSWORD`.
    pub fn load(reference: &SigningKeyRef) -> Result<Self, SigningError> {
        let text = match reference {
            SigningKeyRef::File(p) => {
                std::fs::read_to_string(p).map_err(|source| SigningError::ReadFile {
                    path: p.display().to_string(),
                    source,
                })?
            }
            SigningKeyRef::Env(name) => std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| SigningError::MissingEnv(name.clone()))?,
        };
        let password = std::env::var("PORTSHIFT_SIGNING_KEY_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(SecretString::from);
        let material = Self {
            secret_key: SecretString::from(text),
            password,
        };
        // Fail at start-up, not at the end of the first export.
        SigningKey::from_material(&material)?;
        Ok(material)
    }

    /// The JSON member a worker's credentials document carries:
    /// `{"secret_key": "...", "password": "..."}`. The caller zeroes the bytes.
    pub fn to_credentials_json(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut doc = serde_json::Map::new();
        doc.insert(
            "secret_key".into(),
            self.secret_key.expose_secret().to_string().into(),
        );
        if let Some(p) = &self.password {
            doc.insert("password".into(), p.expose_secret().to_string().into());
        }
        let out = serde_json::to_vec(&serde_json::Value::Object(doc)).unwrap_or_default();
        zeroize::Zeroizing::new(out)
    }
}

/// An unencrypted key as Debian's `minisign -G -W` (0.11) writes it: no KDF, and the
/// checksum field left as zeros, which the reference tool never checks for such keys but
/// the crate does ("Corrupted key"). Accepted only in exactly that shape (Ed25519, no
/// KDF, all-zero checksum); the caller then proves the key by a sign/verify round trip.
fn unencrypted_without_checksum(text: &str) -> Option<minisign::SecretKey> {
    use base64::Engine;
    // sig_alg (2) kdf_alg (2) chk_alg (2) salt (32) opslimit (8) memlimit (8)
    // keynum (8) secret key (64) checksum (32).
    const LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(line)
            .ok()?,
    );
    let shaped = bytes.len() == LEN
        && &bytes[0..2] == b"Ed"
        && bytes[2..4] == [0, 0]
        && bytes[LEN - 32..].iter().all(|b| *b == 0);
    if !shaped {
        return None;
    }
    minisign::SecretKey::from_bytes(&bytes).ok()
}

/// A loaded secret key, ready to sign.
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, [redacted])", self.key_id())
    }
}

/// minisign's key id as its tool prints it (the 8 bytes read little-endian, upper hex).
fn key_id_of(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

impl SigningKey {
    pub fn from_material(m: &SigningKeyMaterial) -> Result<Self, SigningError> {
        let text = m.secret_key.expose_secret();
        let boxed = minisign::SecretKeyBox::from_string(text)
            .map_err(|e| SigningError::BadSecretKey(e.to_string()))?;
        // Never let the crate prompt for a password (a worker has no terminal).
        let sk = match &m.password {
            Some(p) => boxed.into_secret_key(Some(p.expose_secret().to_string())),
            None => boxed
                .into_unencrypted_secret_key()
                .or_else(|e| unencrypted_without_checksum(text).ok_or(e)),
        }
        .map_err(|e| SigningError::BadSecretKey(e.to_string()))?;
        let pk = minisign::PublicKey::from_secret_key(&sk)
            .map_err(|e| SigningError::BadSecretKey(e.to_string()))?;
        let key = Self { sk, pk };
        // The key must sign what its own public half verifies: catches a damaged key
        // here, at start-up, rather than as signatures nobody can check.
        let probe = key.sign(b"portshift key check", "portshift key check")?;
        PublicKey { pk: key.pk.clone() }
            .verify(b"portshift key check", &probe)
            .map_err(|_| {
                SigningError::BadSecretKey(
                    "its signatures do not verify with its own public key (the key file is damaged)"
                        .into(),
                )
            })?;
        Ok(key)
    }

    pub fn key_id(&self) -> String {
        key_id_of(self.pk.keynum())
    }

    /// The public key file (`minisign -p` reads it): two lines, the untrusted comment
    /// naming the key id, then the base64 key.
    pub fn public_key_file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            self.pk.to_base64()
        )
    }

    /// A minisign signature file for `data` with this trusted comment.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, SigningError> {
        self.sign_reader(Cursor::new(data), trusted_comment)
    }

    /// [`Self::sign`] of what `data` reads to its end: minisign hashes it as it reads
    /// (BLAKE2b, its prehashed mode), so a manifest of any size is signed as it streams.
    pub fn sign_reader(
        &self,
        data: impl std::io::Read,
        trusted_comment: &str,
    ) -> Result<String, SigningError> {
        let untrusted = format!(
            "signature from portshift key {} (public key: {PUBLIC_KEYS_DIR}/{}.pub on the console)",
            self.key_id(),
            self.key_id()
        );
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            data,
            Some(trusted_comment),
            Some(&untrusted),
        )
        .map_err(|e| SigningError::Sign(e.to_string()))?;
        Ok(sig.to_string())
    }
}

/// The trusted comment portshift signs: job id, time, and the manifest JSON's SHA-256.
/// One line of `key=value` pairs so a shell can read it (`minisign -V` prints it).
pub fn trusted_comment(
    job: &str,
    time: &chrono::DateTime<chrono::Utc>,
    json_sha256: &str,
) -> String {
    format!(
        "portshift job={job} time={} manifest_json_sha256={json_sha256}",
        time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// A public key (from a `.pub` file, or its base64 line alone) and its key id.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pk: minisign::PublicKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let bad = || SigningError::BadPublicKey(text.chars().take(60).collect());
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(bad)?;
        let pk = minisign::PublicKey::from_base64(line).map_err(|_| bad())?;
        Ok(Self { pk })
    }

    pub fn key_id(&self) -> String {
        key_id_of(self.pk.keynum())
    }

    pub fn file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            self.pk.to_base64()
        )
    }

    /// Checks a minisign signature over `data`; returns its trusted comment.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<String, SigningError> {
        let sig = minisign::SignatureBox::from_string(signature)
            .map_err(|e| SigningError::BadSignature(e.to_string()))?;
        minisign::verify(&self.pk, &sig, Cursor::new(data), true, false, false)
            .map_err(|e| SigningError::BadSignature(e.to_string()))?;
        sig.trusted_comment()
            .map_err(|e| SigningError::BadSignature(e.to_string()))
    }
}

/// The key id a signature file names (to pick the public key that verifies it).
pub fn signature_key_id(signature: &str) -> Result<String, SigningError> {
    let sig = minisign::SignatureBox::from_string(signature)
        .map_err(|e| SigningError::BadSignature(e.to_string()))?;
    Ok(key_id_of(sig.keynum()))
}

/// Reads a file of one or more public keys (each a `.pub` file's two lines, or bare
/// base64 lines), e.g. the operator's list of retired keys.
pub fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, SigningError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:") && !l.starts_with('#'))
        .map(PublicKey::parse)
        .collect()
}

pub fn read_public_keys(path: &Path) -> Result<Vec<PublicKey>, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    parse_public_keys(&text)
}

/// Writes a new unencrypted key pair: the secret key to `secret` (created, mode 0600,
/// never overwritten) and the public key to `public`. Returns the key id.
pub fn generate(secret: &Path, public: &Path) -> Result<String, SigningError> {
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| SigningError::Sign(e.to_string()))?;
    let sk_text = zeroize::Zeroizing::new(
        pair.sk
            .to_box(Some("portshift manifest signing key (keep secret)"))
            .map_err(|e| SigningError::Sign(e.to_string()))?
            .to_string(),
    );
    let key = SigningKey {
        pk: pair.pk,
        sk: pair.sk,
    };
    for p in [secret, public] {
        if p.exists() {
            return Err(SigningError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    write_new(secret, sk_text.as_bytes(), 0o600)?;
    write_new(public, key.public_key_file().as_bytes(), 0o644)?;
    Ok(key.key_id())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let err = |source| SigningError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = options.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(dir: &Path) -> (SigningKeyMaterial, String) {
        let id = generate(&dir.join("k.key"), &dir.join("k.pub")).unwrap();
        let m = SigningKeyMaterial::load(&SigningKeyRef::File(dir.join("k.key"))).unwrap();
        (m, id)
    }

    #[test]
    fn signs_and_verifies_and_a_changed_byte_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (m, id) = material(dir.path());
        let key = SigningKey::from_material(&m).unwrap();
        assert_eq!(key.key_id(), id);
        let sig = key.sign(b"abc  x\n", "portshift job=j").unwrap();
        let pk =
            PublicKey::parse(&std::fs::read_to_string(dir.path().join("k.pub")).unwrap()).unwrap();
        assert_eq!(pk.key_id(), id);
        assert_eq!(signature_key_id(&sig).unwrap(), id);
        assert_eq!(pk.verify(b"abc  x\n", &sig).unwrap(), "portshift job=j");
        assert!(pk.verify(b"abd  x\n", &sig).is_err());
        // Another key does not verify it.
        let other = tempfile::tempdir().unwrap();
        generate(&other.path().join("k.key"), &other.path().join("k.pub")).unwrap();
        let other_pk =
            PublicKey::parse(&std::fs::read_to_string(other.path().join("k.pub")).unwrap())
                .unwrap();
        assert!(other_pk.verify(b"abc  x\n", &sig).is_err());
    }

    #[test]
    fn the_secret_key_file_is_private_never_overwritten_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = material(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("k.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            generate(&dir.path().join("k.key"), &dir.path().join("other.pub")),
            Err(SigningError::Exists { .. })
        ));
        let secret_b64 = m
            .secret_key
            .expose_secret()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        let key = SigningKey::from_material(&m).unwrap();
        let shown = format!("{m:?} {key:?}");
        assert!(!shown.contains(&secret_b64[..20]), "{shown}");
    }

    /// A crate-made unencrypted key re-shaped as Debian's `minisign -G -W` writes it
    /// (checksum left as zeros), or with one checksum byte changed (a damaged key).
    fn debian_shaped(damaged: bool) -> (String, String) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let text = pair.sk.to_box(None).unwrap().to_string();
        let mut bytes = b64.decode(text.lines().nth(1).unwrap()).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n - 32..] {
            *b = 0;
        }
        if damaged {
            bytes[n - 1] = 1;
        }
        (
            format!(
                "untrusted comment: minisign encrypted secret key\n{}\n",
                b64.encode(&bytes)
            ),
            pair.pk.to_base64(),
        )
    }

    #[test]
    fn a_key_without_checksum_as_debian_minisign_writes_it_signs() {
        let (text, pk_b64) = debian_shaped(false);
        let m = SigningKeyMaterial {
            secret_key: SecretString::from(text),
            password: None,
        };
        let key = SigningKey::from_material(&m).unwrap();
        let pk = PublicKey::parse(&pk_b64).unwrap();
        assert_eq!(key.key_id(), pk.key_id());
        let sig = key.sign(b"x", "portshift job=j").unwrap();
        assert_eq!(pk.verify(b"x", &sig).unwrap(), "portshift job=j");
        // A checksum that is neither right nor absent is a damaged key: refused.
        let (damaged, _) = debian_shaped(true);
        let err = SigningKey::from_material(&SigningKeyMaterial {
            secret_key: SecretString::from(damaged),
            password: None,
        })
        .unwrap_err();
        assert!(matches!(err, SigningError::BadSecretKey(_)), "{err}");
    }

    #[test]
    fn references_and_bad_keys_say_what_to_do() {
        assert_eq!(
            "env:SIGNING_KEY".parse::<SigningKeyRef>().unwrap(),
            SigningKeyRef::Env("SIGNING_KEY".into())
        );
        assert_eq!(
            "file:/k".parse::<SigningKeyRef>().unwrap(),
            SigningKeyRef::File("/k".into())
        );
        assert!("env:".parse::<SigningKeyRef>().is_err());
        let pasted = "untrusted comment: x\nRWQ...".parse::<SigningKeyRef>();
        assert!(!pasted.unwrap_err().to_string().contains("RWQ"));
        let bad = SigningKeyMaterial {
            secret_key: SecretString::from("untrusted comment: x\nnot base64\n"),
            password: None,
        };
        let err = SigningKey::from_material(&bad).unwrap_err().to_string();
        assert!(err.contains("signing-key generate"), "{err}");
        assert!(PublicKey::parse("hello").is_err());
    }
}
