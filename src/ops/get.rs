//! `wxtoken get ID`: prints a stored token or ticket, whole, for scripts
//! (`TOKEN=$(wxtoken get oa-main)`). The one command that prints a whole
//! token; it must not print anything else on stdout.

use super::target::TargetArgs;
use super::KindArg;
use anyhow::{bail, Context, Result};
use std::io::Write;
use wxtoken_schema::{CredentialKeys, Kind};

/// `wxtoken get` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Credential id.
    id: String,
    /// What to print.
    #[arg(long, value_enum, default_value = "access_token")]
    kind: KindArg,
    #[command(flatten)]
    target: TargetArgs,
}

/// Runs `wxtoken get`: the value on stdout, or exit 1 naming the key.
pub async fn run(args: Args) -> Result<()> {
    let target = args.target.resolve()?;
    let keys = CredentialKeys::new(&target.namespace, &args.id)?;
    let kind = Kind::from(args.kind);
    let mut con = target.connect().await?;
    let value: Option<String> = redis::cmd("GET")
        .arg(keys.value(kind))
        .query_async(&mut con)
        .await
        .map_err(|e| target.failed(&format!("reading {}", keys.value(kind)), &e.into()))?;
    match value {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{v}").context("writing to stdout")?;
            Ok(())
        }
        None => bail!(
            "no {kind} stored for {:?} (key {})",
            args.id,
            keys.value(kind)
        ),
    }
}
