//! Outgoing e-mail: the operator's SMTP relay (lettre on tokio; TLS by rustls with
//! certificate validation always on), the From address, the console's public URL that
//! links in mails point to, and the messages the console sends (sign-up verification,
//! "you already have an account", invitations, password reset).
//!
//! Only the operator configures this (`serve --smtp-url`, `--mail-from`, `--public-url`;
//! the relay's user name and password only from the server's environment). Links are
//! never built from a request's Host header, so a stranger cannot make a reset mail point
//! to their own site. Mails go out in the background: a page answers in the same way and
//! about the same time whether or not a mail was sent, so answers reveal no accounts.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
pub use zeroize::Zeroizing;

/// What the operator configured.
#[derive(Clone)]
pub struct MailConfig {
    /// `smtp://host[:port]` (STARTTLS required, port 587 by default),
    /// `smtps://host[:port]` (TLS from the first byte, port 465 by default), or
    /// `smtp://<loopback>:port?tls=none` for a relay on this machine only.
    pub smtp_url: String,
    /// The From address, e.g. `portshift <no-reply@example.com>`.
    pub from: String,
    /// Where users reach the console, e.g. `https://portshift.example.com`.
    pub public_url: String,
    /// A PEM bundle of extra CA certificates, for a relay with a private CA.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("smtp_url", &self.smtp_url)
            .field("from", &self.from)
            .field("public_url", &self.public_url)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(
        "the SMTP URL {url:?} is not usable: {why}. Use smtp://host[:port] (STARTTLS required), smtps://host[:port] (TLS from the start), or smtp://127.0.0.1:port?tls=none for a relay on this machine"
    )]
    Url { url: String, why: String },
    #[error(
        "the From address {0:?} is not an e-mail address: give --mail-from like 'portshift <no-reply@example.com>'"
    )]
    From(String),
    #[error(
        "the public URL {0:?} is not an http(s) URL: give --public-url like https://portshift.example.com"
    )]
    PublicUrl(String),
    #[error("could not read the SMTP CA bundle {path}: {why}. Give a PEM file with --smtp-ca-file")]
    Ca { path: String, why: String },
    #[error(
        "PORTSHIFT_SMTP_USERNAME and PORTSHIFT_SMTP_PASSWORD go together: set both, or neither"
    )]
    HalfCredentials,
    #[error("could not build the e-mail: {0}")]
    Build(String),
    #[error("the SMTP relay did not take the e-mail: {0}. Check --smtp-url and the relay's log")]
    Send(String),
}

/// The operator's relay, ready to send.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    public_url: url::Url,
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        // smtp:// is not a "special" scheme to the URL parser: IP hosts come as text.
        url::Host::Domain(d) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

impl Mailer {
    pub fn new(c: &MailConfig) -> Result<Self, MailError> {
        let bad = |why: &str| MailError::Url {
            url: c.smtp_url.clone(),
            why: why.to_string(),
        };
        let u = url::Url::parse(&c.smtp_url).map_err(|e| bad(&e.to_string()))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "it holds a user name or password; those go only in the server's environment (PORTSHIFT_SMTP_USERNAME, PORTSHIFT_SMTP_PASSWORD), never on a command line",
            ));
        }
        let host = u.host().ok_or_else(|| bad("it names no host"))?;
        let host_name = match &host {
            url::Host::Domain(d) => d.trim_start_matches('[').trim_end_matches(']').to_string(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let mut plain = false;
        for (k, v) in u.query_pairs() {
            match (k.as_ref(), v.as_ref()) {
                ("tls", "none") => plain = true,
                ("tls", "required") => plain = false,
                _ => return Err(bad(&format!("unknown option {k}={v} (only tls=none)"))),
            }
        }
        let mut tls = TlsParameters::builder(host_name.clone());
        if let Some(path) = &c.ca_file {
            let ca = |why: String| MailError::Ca {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            tls = tls
                .add_root_certificate(Certificate::from_pem(&pem).map_err(|e| ca(e.to_string()))?);
        }
        let params = || {
            tls.clone()
                .build_rustls()
                .map_err(|e| bad(&format!("TLS setup failed: {e}")))
        };
        let (port, mode) = match u.scheme() {
            "smtps" if plain => return Err(bad("smtps:// always uses TLS; drop tls=none")),
            "smtps" => (u.port().unwrap_or(465), Tls::Wrapper(params()?)),
            "smtp" if plain => {
                if !is_loopback(&host) {
                    return Err(bad(
                        "tls=none is only for a relay on this machine (localhost, 127.0.0.1, ::1): mail and the relay password would cross the network in clear",
                    ));
                }
                (u.port().unwrap_or(25), Tls::None)
            }
            "smtp" => (u.port().unwrap_or(587), Tls::Required(params()?)),
            other => return Err(bad(&format!("unknown scheme {other}://"))),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host_name)
            .port(port)
            .tls(mode)
            .timeout(Some(Duration::from_secs(20)));
        match (&c.username, &c.password) {
            (Some(user), Some(pass)) => {
                builder = builder.credentials(Credentials::new(user.clone(), pass.to_string()));
            }
            (None, None) => {}
            _ => return Err(MailError::HalfCredentials),
        }
        let from: Mailbox = c
            .from
            .parse()
            .map_err(|_| MailError::From(c.from.clone()))?;
        let public_url = url::Url::parse(c.public_url.trim_end_matches('/'))
            .ok()
            .filter(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some())
            .ok_or_else(|| MailError::PublicUrl(c.public_url.clone()))?;
        Ok(Self {
            transport: builder.build(),
            from,
            public_url,
        })
    }

    /// An absolute link into the console: `path` starts with `/`.
    pub fn link(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }

    /// Sends one plain-text mail and waits for the relay's answer.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|e| MailError::Build(format!("{e}")))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| MailError::Send(e.to_string()))
    }
}

/// Sends in the background (the answer to the request does not wait for the relay, and
/// so does not depend on whether a mail was sent). Failures are logged without the body:
/// it may hold a one-time link.
pub fn send_later(mailer: Option<&Arc<Mailer>>, to: String, subject: &'static str, body: String) {
    let Some(m) = mailer.cloned() else {
        tracing::warn!(
            "console: no SMTP relay configured (serve --smtp-url); a mail ({subject}) was not sent"
        );
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = m.send(&to, subject, body).await {
            tracing::error!("console: mail ({subject}) not sent: {e}");
        }
    });
}

// --- the messages -------------------------------------------------------------------

pub fn verify_body(link: &str, hours: i64) -> String {
    format!(
        "Someone (we hope you) created a portshift account with this e-mail address.\n\n\
         To confirm the address, open this link and enter the password you chose:\n\n{link}\n\n\
         The link works once and expires in {hours} hours. If you did not sign up, ignore this\n\
         mail: without the password nobody can confirm the address.\n"
    )
}

pub fn already_body(sign_in: &str, reset: &str) -> String {
    format!(
        "Someone (we hope you) tried to create a portshift account with this e-mail address,\n\
         but you already have one. Nothing was changed.\n\n\
         Sign in: {sign_in}\nForgot your password? {reset}\n\n\
         If this was not you, you can ignore this mail.\n"
    )
}

pub fn invitation_body(org: &str, role: &str, inviter: &str, link: &str, days: i64) -> String {
    format!(
        "{inviter} invited this e-mail address to the portshift organisation \"{org}\" as {role}.\n\n\
         To accept, sign in (or sign up and confirm this address), then accept the invitation\n\
         on your organisations page:\n\n{link}\n\n\
         The invitation expires in {days} days. If you do not know the sender, ignore this mail.\n"
    )
}

pub fn reset_body(link: &str, minutes: i64) -> String {
    format!(
        "Someone (we hope you) asked to reset the password of the portshift account with\n\
         this e-mail address. To choose a new password, open:\n\n{link}\n\n\
         The link works once and expires in {minutes} minutes. Resetting signs the account\n\
         out everywhere. If you did not ask for this, ignore this mail: nothing changes.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> MailConfig {
        MailConfig {
            smtp_url: url.into(),
            from: "portshift <no-reply@example.com>".into(),
            public_url: "https://console.example.com/".into(),
            ca_file: None,
            username: None,
            password: None,
        }
    }

    #[tokio::test]
    async fn smtp_urls_are_checked() {
        for ok in [
            "smtp://mail.example.com",
            "smtp://mail.example.com:2525",
            "smtps://mail.example.com",
            "smtp://127.0.0.1:19025?tls=none",
            "smtp://localhost:25?tls=none",
            "smtp://[::1]:25?tls=none",
        ] {
            Mailer::new(&cfg(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            (
                "smtp://mail.example.com?tls=none",
                "only for a relay on this machine",
            ),
            (
                "smtp://10.0.0.5:25?tls=none",
                "only for a relay on this machine",
            ),
            ("smtp://user:pw@mail.example.com", "environment"),
            ("smtps://mail.example.com?tls=none", "always uses TLS"),
            ("http://mail.example.com", "unknown scheme"),
            ("smtp://mail.example.com?verify=no", "unknown option"),
        ] {
            let e = Mailer::new(&cfg(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let mut half = cfg("smtp://mail.example.com");
        half.username = Some("u".into());
        assert!(matches!(
            Mailer::new(&half),
            Err(MailError::HalfCredentials)
        ));
        let mut from = cfg("smtp://mail.example.com");
        from.from = "not an address".into();
        assert!(matches!(Mailer::new(&from), Err(MailError::From(_))));
        let mut public = cfg("smtp://mail.example.com");
        public.public_url = "console.example.com".into();
        assert!(matches!(Mailer::new(&public), Err(MailError::PublicUrl(_))));
    }

    #[tokio::test]
    async fn links_use_the_configured_public_url() {
        let m = Mailer::new(&cfg("smtp://mail.example.com")).unwrap();
        assert_eq!(
            m.link("/verify-email?token=abc"),
            "https://console.example.com/verify-email?token=abc"
        );
    }
}
