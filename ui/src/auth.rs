//! Authentication: the password policy, argon2id hashing, session tokens (random, kept
//! in an HttpOnly Secure SameSite cookie, stored only as their SHA-256), CSRF tokens, and
//! the salted hash that keys rate limits by client address.

use std::net::IpAddr;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use base64::Engine;
use pipeline::accounts::{Accounts, AccountsError, User};
use sha2::{Digest, Sha256};

pub const SESSION_COOKIE: &str = "portshift_session";
/// Double-submit cookie protecting the sign-in and sign-up forms (no session yet).
pub const PRE_COOKIE: &str = "portshift_pre";
pub const SESSION_DAYS: i64 = 14;

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("could not hash the password ({e}); try again"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the e-mail is unknown, so a missing account costs the
/// same time as a wrong password.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("portshift-no-such-account").unwrap_or_default())
}

/// Fragments found in breached-password lists; a password containing one is refused.
const BREACHED_PATTERNS: &[&str] = &[
    "password",
    "passw0rd",
    "p@ssw0rd",
    "123456",
    "654321",
    "qwerty",
    "azerty",
    "asdfgh",
    "zxcvbn",
    "letmein",
    "welcome",
    "admin",
    "iloveyou",
    "monkey",
    "dragon",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "trustno1",
    "abc123",
    "111111",
    "000000",
    "changeme",
    "secret",
    "master",
    "login",
    "chorus",
    "portshift",
    "abcdef",
    "987654",
];

/// Normalises an e-mail address (trim, lower-case) and checks its shape.
pub fn normalise_email(email: &str) -> Result<String, String> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !e.chars().any(|c| c.is_whitespace() || c == '<' || c == '>');
    if ok {
        Ok(e)
    } else {
        Err("Enter an e-mail address like name@example.com.".into())
    }
}

/// The password policy: at least 12 characters, not built on a breached-password pattern,
/// not the e-mail address, not one repeated or sequential run.
pub fn check_password(password: &str, email: &str) -> Result<(), String> {
    let chars: Vec<char> = password.chars().collect();
    if chars.len() < 12 {
        return Err(
            "Use at least 12 characters: a few unrelated words make a strong, memorable password."
                .into(),
        );
    }
    if chars.len() > 256 {
        return Err("Use at most 256 characters.".into());
    }
    let lower = password.to_lowercase();
    if let Some(p) = BREACHED_PATTERNS.iter().find(|p| lower.contains(*p)) {
        return Err(format!(
            "This password contains \"{p}\", a pattern common in breached passwords: choose something less guessable."
        ));
    }
    let local = email.split('@').next().unwrap_or_default().to_lowercase();
    if local.len() >= 4 && lower.contains(&local) {
        return Err("The password must not contain your e-mail address.".into());
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 6 {
        return Err(
            "This password repeats too few characters: use at least 6 different ones.".into(),
        );
    }
    let sequential = chars
        .windows(2)
        .filter(|w| (w[1] as i64 - w[0] as i64).abs() <= 1)
        .count();
    if sequential * 10 >= (chars.len() - 1) * 7 {
        return Err(
            "This password is mostly a keyboard or alphabet run: choose something less guessable."
                .into(),
        );
    }
    Ok(())
}

/// A new session for `user`: returns (cookie token, CSRF token). Only the token's hash
/// is stored.
pub async fn issue_session(
    accounts: &Accounts,
    user: &User,
) -> Result<(String, String), AccountsError> {
    let token = random_token();
    let csrf = random_token();
    let expires = chrono::Utc::now().timestamp_millis() + SESSION_DAYS * 24 * 3600 * 1000;
    accounts
        .create_session(&sha256_hex(token.as_bytes()), &user.id, &csrf, expires)
        .await?;
    Ok((token, csrf))
}

pub fn session_cookie(token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_DAYS * 24 * 3600
    )
}

pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

pub fn pre_cookie(token: &str) -> String {
    format!("{PRE_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=3600")
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// The salted SHA-256 that stands for a client address in rate limits (the address
/// itself is never stored or logged).
pub fn client_key(salt: &str, ip: Option<IpAddr>) -> String {
    let ip = ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    sha256_hex(format!("{salt}|{ip}").as_bytes())
}

/// The rate-limit key of one user's work-starting requests (a salted hash of their id;
/// deleted with the account).
pub fn user_rate_key(salt: &str, user_id: &str) -> String {
    sha256_hex(format!("{salt}|user|{user_id}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy_refuses_weak_and_breached_patterns() {
        let email = "ada@example.com";
        for weak in [
            "short",
            "Password1234!",
            "qwertyuiop12",
            "aaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "ada-ada-ada-ada!",
            "Welcome2024!!",
        ] {
            assert!(check_password(weak, email).is_err(), "{weak:?} accepted");
        }
        assert!(check_password("correct horse battery staple", email).is_ok());
        assert!(check_password("tangerine-orbit-Violin-42", email).is_ok());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("tangerine-orbit-Violin-42").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("tangerine-orbit-Violin-42", &h));
        assert!(!verify_password("tangerine-orbit-Violin-43", &h));
    }

    #[test]
    fn cookies_are_parsed_and_tokens_compared() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; portshift_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", ""));
        let c = session_cookie("t");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
            assert!(c.contains(attr), "{c}");
        }
    }
}
