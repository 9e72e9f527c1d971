//! The AWS calls of a cross-account role (the model is `pipeline::aws_role`): the
//! scheduler's STS AssumeRole with the organisation's ExternalId, and the worker's
//! Secrets Manager reads with the role's temporary credentials. Values read here go
//! straight into zeroize-on-drop secret types.

use aws_config::{BehaviorVersion, Region};
use pipeline::aws_role::{RoleGrant, RolePlan};
use pipeline::secrets::{Credentials, S3Credentials};
use secrecy::{ExposeSecret, SecretString};

/// Where STS and Secrets Manager are. Operator settings only (`scheduler
/// --aws-endpoint-url`, for an emulator): never taken from tenant input.
#[derive(Clone, Debug, Default)]
pub struct AwsRoleOptions {
    /// One endpoint for STS and Secrets Manager (e.g. moto); AWS's own when unset.
    pub endpoint_url: Option<String>,
    /// The STS region (default us-east-1); Secrets Manager uses each secret's region.
    pub region: Option<String>,
}

/// How long the role's temporary credentials last: the Chorus token is read once at
/// the start, but S3 writes through the role need them for the whole run.
pub const SESSION_SECONDS: i32 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "could not assume the role {role} with this organisation's ExternalId {external_id}: {detail}. \
         The role's trust policy must trust portshift's AWS principal with the condition \
         sts:ExternalId = {external_id} (shown in the organisation's settings)"
    )]
    Assume {
        role: String,
        external_id: String,
        detail: String,
    },
    #[error("STS answered AssumeRole for {role} without credentials")]
    NoCredentials { role: String },
    #[error(
        "could not read the secret {secret} through the role {role}: {detail}. The role needs \
         secretsmanager:GetSecretValue on that secret (and kms:Decrypt on its key)"
    )]
    Secret {
        secret: String,
        role: String,
        detail: String,
    },
    #[error("the secret {secret} holds no text value: store the value as a plain string secret")]
    EmptySecret { secret: String },
}

/// Assumes the plan's role with the organisation's ExternalId using this process's own
/// AWS identity (the operator's), and returns the worker's grant document (with the
/// operator's signing key, if any, so the run's manifest is signed like any other).
pub async fn assume(
    plan: &RolePlan,
    external_id: &str,
    session_name: &str,
    options: &AwsRoleOptions,
    signing_key: Option<&pipeline::signing::SigningKeyMaterial>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, RoleError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(
        options
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string()),
    ));
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    let sts = aws_sdk_sts::Client::new(&config);
    let out = sts
        .assume_role()
        .role_arn(&plan.role_arn)
        .role_session_name(session_name)
        .external_id(external_id)
        .duration_seconds(SESSION_SECONDS)
        .send()
        .await
        .map_err(|e| RoleError::Assume {
            role: plan.role_arn.clone(),
            external_id: external_id.to_string(),
            detail: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
        })?;
    let creds = out.credentials().ok_or_else(|| RoleError::NoCredentials {
        role: plan.role_arn.clone(),
    })?;
    Ok(RoleGrant::document(
        plan,
        creds.access_key_id(),
        creds.secret_access_key(),
        creds.session_token(),
        signing_key,
    ))
}

/// The worker's side: reads the grant's secrets with the role's temporary credentials
/// and builds the run's credentials (S3 with the role's credentials when asked).
pub async fn credentials_from_grant(
    grant: &RoleGrant,
    options: &AwsRoleOptions,
) -> Result<Credentials, RoleError> {
    let chorus = read_secret(grant, &grant.chorus_token_secret, options).await?;
    let mut creds = Credentials::new(chorus);
    creds.signing_key = grant.signing_key.clone();
    if let Some(secret) = &grant.webhook_secret_secret {
        creds.webhook_secret = Some(read_secret(grant, secret, options).await?);
    }
    if grant.s3 {
        creds.s3 = Some(S3Credentials {
            access_key_id: grant.access_key_id.clone(),
            secret_access_key: grant.secret_access_key.clone(),
            session_token: Some(grant.session_token.clone()),
        });
    }
    Ok(creds)
}

async fn read_secret(
    grant: &RoleGrant,
    secret: &str,
    options: &AwsRoleOptions,
) -> Result<SecretString, RoleError> {
    let region = pipeline::aws_role::region_of(secret)
        .unwrap_or("us-east-1")
        .to_string();
    let credentials = aws_sdk_secretsmanager::config::Credentials::new(
        grant.access_key_id.clone(),
        grant.secret_access_key.expose_secret().to_string(),
        Some(grant.session_token.expose_secret().to_string()),
        None,
        "portshift-aws-role",
    );
    let mut config = aws_sdk_secretsmanager::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(credentials);
    if let Some(endpoint) = &options.endpoint_url {
        config = config.endpoint_url(endpoint);
    }
    let client = aws_sdk_secretsmanager::Client::from_conf(config.build());
    let out = client
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .map_err(|e| RoleError::Secret {
            secret: secret.to_string(),
            role: grant.role_arn.clone(),
            detail: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        })?;
    let value = out
        .secret_string()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RoleError::EmptySecret {
            secret: secret.to_string(),
        })?;
    let value = SecretString::from(value.to_string());
    pipeline::secrets::register_redaction(value.expose_secret());
    Ok(value)
}
