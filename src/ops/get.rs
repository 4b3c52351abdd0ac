//! `wxtoken get ID`: prints a stored token or ticket, whole, for scripts
//! (`TOKEN=$(wxtoken get oa-main)`, `wxtoken get authorizer/wxC/wxA`,
//! `wxtoken get component/wxC`). The one command that prints a whole
//! token; it must not print anything else on stdout.

use super::target::TargetArgs;
use super::{kind_for, subject_id, KindArg};
use anyhow::{bail, Context, Result};
use std::io::Write;
use wxtoken_schema::CredentialKeys;

/// `wxtoken get` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Credential id: a credential of the config (oa-main), a third-party
    /// platform (component/APPID) or one of its authorizers
    /// (authorizer/COMPONENT_APPID/APPID), a WeCom suite (suite/SUITE_ID)
    /// or a corp that authorized it (corp/SUITE_ID/CORPID).
    #[arg(value_parser = subject_id)]
    id: String,
    /// What to print [default: access_token; component_access_token for a
    /// component/…, suite_access_token for a suite/…].
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    #[command(flatten)]
    target: TargetArgs,
}

/// Runs `wxtoken get`: the value on stdout, or exit 1 naming the key.
pub async fn run(args: Args) -> Result<()> {
    let kind = kind_for(&args.id, args.kind)?;
    let target = args.target.resolve()?;
    let keys = CredentialKeys::for_id(&target.namespace, &args.id)?;
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
