//! `portshift signing-key`: makes the operator's manifest signing key pair, and prints
//! the public key that verifies exports (in minisign's own format).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::SigningArgs;

#[derive(clap::Subcommand)]
pub enum SigningKeyCommand {
    /// Write a new key pair: the secret key (mode 0600, unencrypted: keep it like any
    /// other credential) and its public key. Never overwrites a file.
    Generate {
        #[arg(long, default_value = "portshift-signing.key")]
        secret_key: PathBuf,
        #[arg(long, default_value = "portshift-signing-key.pub")]
        public_key: PathBuf,
    },
    /// Print the public key of the configured secret key (--signing-key or
    /// PORTSHIFT_SIGNING_KEY), as `minisign -p` reads it.
    Public {
        #[command(flatten)]
        signing: SigningArgs,
    },
}

pub fn run(cmd: SigningKeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SigningKeyCommand::Generate {
            secret_key,
            public_key,
        } => {
            let id = pipeline::signing::generate(&secret_key, &public_key)?;
            println!(
                "Key {id}: secret key {} (mode 0600), public key {}",
                secret_key.display(),
                public_key.display()
            );
            println!(
                "Sign exports with: portshift export --signing-key {} ...  (or PORTSHIFT_SIGNING_KEY)",
                secret_key.display()
            );
        }
        SigningKeyCommand::Public { signing } => {
            let Some(material) = signing.material()? else {
                bail!(
                    "no signing key configured: give --signing-key FILE|env:NAME or set PORTSHIFT_SIGNING_KEY"
                );
            };
            let key = pipeline::signing::SigningKey::from_material(&material)?;
            print!("{}", key.public_key_file());
        }
    }
    Ok(ExitCode::SUCCESS)
}
