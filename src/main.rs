//! `wxtoken`: the one binary. `run` is a refresher replica, `sim` the WeChat
//! simulator, `demo` the quick start (local Redis + simulator + replicas),
//! `get` prints a stored token for scripts.
//!
//! This file only parses the command line, sets up logging and hands over;
//! the work lives in the crates under `crates/`.

mod demo;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "wxtoken",
    version,
    about = "Central control server for WeChat API credentials, backed by Redis"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "WXTOKEN_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a refresher replica (run several; they coordinate through Redis).
    Run {
        /// Config file (see config.example.toml).
        #[arg(long, short, env = wxtoken_refresher::config::ENV_CONFIG)]
        config: PathBuf,
        /// This replica's id [default: replica.id from the config, else
        /// $WXTOKEN_REPLICA_ID, else <hostname>-<pid>].
        #[arg(long)]
        replica_id: Option<String>,
    },
    /// Validate a config file and exit (0 = valid, 1 = invalid).
    CheckConfig {
        /// Config file to check.
        file: PathBuf,
    },
    /// Run the WeChat simulator (token, stable_token, tickets, a business API, faults).
    Sim {
        /// Simulator config file (see crates/sim/sim.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// An app as APPID:SECRET (repeatable); added to those in --config.
        #[arg(long = "app", value_name = "APPID:SECRET")]
        apps: Vec<String>,
        /// Token lifetime (overrides the config), e.g. 7200s.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// How long a replaced token stays valid (overrides the config), e.g. 300s.
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<Duration>,
    },
    /// The quick start: local Redis, the simulator and several refresher
    /// replicas, showing which replica fetched each token.
    Demo(demo::Args),
    /// Print the stored access token (or ticket) of a credential, for scripts.
    Get {
        /// Credential id.
        id: String,
        /// What to print.
        #[arg(long, default_value = "access_token", value_parser = ["access_token", "jsapi_ticket", "wx_card_ticket"])]
        kind: String,
        /// Redis URL.
        #[arg(
            long,
            env = "WXTOKEN_REDIS_URL",
            default_value = "redis://127.0.0.1:6379"
        )]
        redis_url: String,
        /// Key namespace.
        #[arg(long, default_value = wxtoken_schema::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,reqwest=warn,hyper=warn,hyper_util=warn,h2=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight work, releasing locks"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight work, releasing locks"),
        }
        t.cancel();
    });
    Ok(token)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config, replica_id } => run(config, replica_id).await,
        Command::CheckConfig { file } => {
            let cfg = wxtoken_refresher::Config::load(&file)?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} credentials)",
                file.display(),
                cfg.credentials.len()
            );
            Ok(())
        }
        Command::Sim {
            config,
            listen,
            apps,
            expires_in,
            overlap,
        } => sim(config, listen, apps, expires_in, overlap).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Get {
            id,
            kind,
            redis_url,
            namespace,
        } => get(&id, &kind, &redis_url, &namespace).await,
    }
}

async fn run(config: PathBuf, replica_id: Option<String>) -> Result<()> {
    let cfg = wxtoken_refresher::Config::load(&config)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let replica = replica_id
        .or_else(|| cfg.replica_id.clone())
        .unwrap_or_else(wxtoken_refresher::default_replica_id);
    wxtoken_schema::validate_name("replica id", &replica)?;
    let shutdown = shutdown_on_signals()?;
    let span = tracing::info_span!("replica", id = %replica);
    wxtoken_refresher::run(cfg, replica, shutdown)
        .instrument(span)
        .await
        .context("refresher")
}

async fn sim(
    config: Option<PathBuf>,
    listen: SocketAddr,
    apps: Vec<String>,
    expires_in: Option<Duration>,
    overlap: Option<Duration>,
) -> Result<()> {
    let mut cfg = match &config {
        Some(path) => wxtoken_sim::SimConfig::load(path)?,
        None => wxtoken_sim::SimConfig::default(),
    };
    for app in apps {
        let (appid, secret) = app
            .split_once(':')
            .with_context(|| "--app takes APPID:SECRET".to_string())?;
        cfg = cfg.with_app(appid, secret);
    }
    if let Some(d) = expires_in {
        cfg.timing.expires_in = d;
    }
    if let Some(d) = overlap {
        cfg.timing.overlap = d;
    }
    cfg.validate()?;
    let shutdown = shutdown_on_signals()?;
    tracing::info!(%listen, apps = cfg.apps.len(), "WeChat simulator listening; admin API under /_sim/");
    wxtoken_sim::serve(cfg, listen, shutdown.cancelled_owned())
        .await
        .with_context(|| format!("simulator on {listen}"))
}

async fn get(id: &str, kind: &str, redis_url: &str, namespace: &str) -> Result<()> {
    let keys = wxtoken_schema::CredentialKeys::new(namespace, id)?;
    let kind = wxtoken_schema::KINDS
        .into_iter()
        .find(|k| k.as_str() == kind)
        .context("unknown kind")?;
    let client = redis::Client::open(redis_url).context("invalid Redis URL")?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let value: Option<String> = redis::cmd("GET")
        .arg(keys.value(kind))
        .query_async(&mut con)
        .await
        .context("reading the token")?;
    match value {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => anyhow::bail!("no {kind} stored for {id:?} (key {})", keys.value(kind)),
    }
}
