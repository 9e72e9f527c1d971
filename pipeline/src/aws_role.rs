//! Cross-account AWS roles for schedules whose credentials stay in the customer's own
//! account. Owns the reference form (`aws-role:<role ARN>?secret=<secret ARN>`), each
//! organisation's ExternalId (the confused-deputy guard: generated once, stored, shown
//! to the organisation's owners and admins, and the only ExternalId portshift ever sends
//! for that organisation), and the grant a worker receives instead of credentials.
//!
//! The flow: the scheduler (which holds portshift's own AWS identity, as the operator
//! configured it) calls STS AssumeRole for the customer's role with the organisation's
//! ExternalId and hands the role's temporary credentials, with the ARNs of the secrets,
//! to the run's worker over its standard input. The worker reads the secrets from the
//! customer's Secrets Manager into memory. The Chorus token never passes through the
//! scheduler, and portshift's own identity never enters a worker. The STS and Secrets
//! Manager calls themselves live in `stages::aws_role`.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::Row;

use crate::store::{JobStore, StoreError};

/// The prefix of a role reference.
pub const PREFIX: &str = "aws-role:";

/// A parsed `aws-role:` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRef {
    pub role_arn: String,
    /// The Secrets Manager secret (in the role's account) holding the value; none for
    /// S3, which uses the role's temporary credentials themselves.
    pub secret_arn: Option<String>,
}

impl std::fmt::Display for RoleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", self.role_arn)?;
        if let Some(s) = &self.secret_arn {
            write!(f, "?secret={s}")?;
        }
        Ok(())
    }
}

/// Parses `aws-role:<role ARN>[?secret=<secret ARN>]`; `None` when `s` has another
/// prefix. The error is a sentence saying what is wrong (it never quotes the input: a
/// form field may hold a pasted secret).
pub fn parse(s: &str) -> Option<Result<RoleRef, String>> {
    let rest = s.strip_prefix(PREFIX)?;
    let (role, secret) = match rest.split_once("?secret=") {
        Some((r, s)) => (r, Some(s)),
        None => (rest, None),
    };
    if !is_role_arn(role) {
        return Some(Err(
            "the role must be an IAM role ARN, e.g. arn:aws:iam::123456789012:role/portshift-export"
                .into(),
        ));
    }
    if let Some(secret) = secret
        && !is_secret_arn(secret)
    {
        return Some(Err(
            "the secret must be a Secrets Manager secret ARN, e.g. \
             arn:aws:secretsmanager:eu-west-1:123456789012:secret:chorus-token-AbCdEf"
                .into(),
        ));
    }
    Some(Ok(RoleRef {
        role_arn: role.to_string(),
        secret_arn: secret.map(str::to_string),
    }))
}

fn arn_parts(arn: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    (parts.len() == 6 && parts[0] == "arn" && parts[1].starts_with("aws")).then_some(parts)
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn name_chars(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b) || extra.contains(&b))
}

/// `arn:<partition>:iam::<account>:role/<path/><name>`.
pub fn is_role_arn(arn: &str) -> bool {
    arn_parts(arn).is_some_and(|p| {
        p[2] == "iam"
            && p[3].is_empty()
            && is_account(p[4])
            && p[5]
                .strip_prefix("role/")
                .is_some_and(|n| name_chars(n, b"/"))
    })
}

/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`.
pub fn is_secret_arn(arn: &str) -> bool {
    arn_parts(arn).is_some_and(|p| {
        p[2] == "secretsmanager"
            && name_chars(p[3], b"")
            && is_account(p[4])
            && p[5]
                .strip_prefix("secret:")
                .is_some_and(|n| name_chars(n, b"/"))
    })
}

/// The region named in an ARN (where its Secrets Manager is).
pub fn region_of(arn: &str) -> Option<&str> {
    arn_parts(arn).map(|p| p[3]).filter(|r| !r.is_empty())
}

/// What one run reads through a role: the role, and the secret of each credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolePlan {
    pub role_arn: String,
    pub chorus_token_secret: String,
    pub webhook_secret_secret: Option<String>,
    /// S3 writes with the role's temporary credentials.
    pub s3: bool,
}

/// What a worker receives instead of a credentials document when its run reads its
/// credentials through a role: the role's temporary credentials and where the secrets
/// are. Deserialize-only like `Credentials`; written by [`RoleGrant::document`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    pub role_arn: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: SecretString,
    pub chorus_token_secret: String,
    #[serde(default)]
    pub webhook_secret_secret: Option<String>,
    #[serde(default)]
    pub s3: bool,
    /// The operator's manifest signing key, when one is configured: a role run signs
    /// its manifest like any other run (the key is the operator's, not the customer's).
    #[serde(default)]
    pub signing_key: Option<crate::signing::SigningKeyMaterial>,
}

impl std::fmt::Debug for RoleGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleGrant")
            .field("role_arn", &self.role_arn)
            .field("chorus_token_secret", &self.chorus_token_secret)
            .field("webhook_secret_secret", &self.webhook_secret_secret)
            .field("s3", &self.s3)
            .finish_non_exhaustive()
    }
}

impl RoleGrant {
    /// The grant as the worker's JSON, in one zeroed-on-drop buffer sized up front.
    pub fn document(
        plan: &RolePlan,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: &str,
        signing_key: Option<&crate::signing::SigningKeyMaterial>,
    ) -> zeroize::Zeroizing<Vec<u8>> {
        use crate::signing::ExposedSigningKey;
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            role_arn: &'a str,
            access_key_id: &'a str,
            secret_access_key: &'a str,
            session_token: &'a str,
            chorus_token_secret: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            webhook_secret_secret: Option<&'a str>,
            s3: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            signing_key: Option<ExposedSigningKey<'a>>,
        }
        let doc = Doc {
            role_arn: &plan.role_arn,
            access_key_id,
            secret_access_key,
            session_token,
            chorus_token_secret: &plan.chorus_token_secret,
            webhook_secret_secret: plan.webhook_secret_secret.as_deref(),
            s3: plan.s3,
            signing_key: signing_key.map(|k| k.exposed()),
        };
        let key_len = doc
            .signing_key
            .as_ref()
            .map_or(0, ExposedSigningKey::secret_len);
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(
            4096 + 2 * (secret_access_key.len() + session_token.len() + key_len),
        ));
        let _ = serde_json::to_writer(&mut *out, &doc);
        out
    }

    /// Registers the temporary credentials for log redaction.
    pub fn redact_in_logs(&self) {
        crate::secrets::register_redaction(self.secret_access_key.expose_secret());
        crate::secrets::register_redaction(self.session_token.expose_secret());
    }
}

impl JobStore {
    /// The organisation's ExternalId, made on first use and never changed: customers
    /// put it in their role's trust policy (`sts:ExternalId`), so that a role trusting
    /// portshift can only be assumed for *their* organisation.
    pub async fn aws_external_id(&self, organisation: &str) -> Result<String, StoreError> {
        let name = format!("aws_external_id:{organisation}");
        let fresh = format!("portshift-{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO console_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&name)
        .bind(fresh)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM console_settings WHERE name = $1")
            .bind(&name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_references_parse_and_refuse_what_is_not_an_arn() {
        let r = parse("aws-role:arn:aws:iam::123456789012:role/team/portshift-export?secret=arn:aws:secretsmanager:eu-west-1:123456789012:secret:chorus-AbC")
            .unwrap()
            .unwrap();
        assert_eq!(
            r.role_arn,
            "arn:aws:iam::123456789012:role/team/portshift-export"
        );
        assert_eq!(
            region_of(r.secret_arn.as_deref().unwrap()),
            Some("eu-west-1")
        );
        assert_eq!(
            parse(&r.to_string()).unwrap().unwrap(),
            r,
            "display round-trips"
        );
        let bare = parse("aws-role:arn:aws:iam::123456789012:role/x")
            .unwrap()
            .unwrap();
        assert!(bare.secret_arn.is_none());
        assert!(parse("env:X").is_none());
        for bad in [
            "aws-role:",
            "aws-role:arn:aws:iam::12345:role/x",
            "aws-role:arn:aws:s3:::bucket",
            "aws-role:arn:aws:iam::123456789012:user/x",
            "aws-role:arn:aws:iam::123456789012:role/x?secret=sk-CANARY",
            "aws-role:arn:aws:iam::123456789012:role/x?secret=arn:aws:secretsmanager::123456789012:secret:x",
        ] {
            let e = parse(bad).unwrap().unwrap_err();
            assert!(!e.contains("CANARY"), "{e}");
        }
    }
}
