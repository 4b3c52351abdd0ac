//! `wxtoken`: the one binary. `run` is a refresher replica, `sim` the WeChat
//! simulator, `demo` the quick start (local Redis + simulator + replicas);
//! `status`, `refresh`, `get` and `authorizers` are the operator's commands
//! (`ops`).
//!
//! This file only parses the command line, sets up logging and hands over;
//! the work lives in the crates under `crates/` and in the modules here.

mod demo;
mod ops;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Print the stored access token (or ticket) of a credential, whole, for
    /// scripts (exit 1 if none is stored).
    Get(ops::get::Args),
    /// Show every credential: time left, last refresh and by which replica,
    /// fence, last error, pause, pending refresh requests (exit 0 healthy,
    /// 3 unhealthy, 1 error).
    Status(ops::status::Args),
    /// Ask the refreshers to replace a stored value now, and wait for it
    /// (exit 0 replaced, 4 not within --wait, 1 error).
    Refresh(ops::refresh::Args),
    /// A third-party platform's authorizers: list them, add one by
    /// authorization code, remove one, reconcile with WeChat's list.
    Authorizers(ops::authorizers::Args),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `wxtoken man > wxtoken.1`.
    Man,
    /// GET a URL (e.g. a replica's http://127.0.0.1:9100/healthz) and exit
    /// 0 if it answers 200, 1 otherwise: a health check for containers that
    /// have no curl.
    Probe {
        /// The URL.
        #[arg(default_value = "http://127.0.0.1:9100/healthz")]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,reqwest=warn,hyper=warn,hyper_util=warn,h2=warn")
    });
    // A closed stderr (a log pipe whose reader went away) must not take the
    // replica down: by default the fmt layer reports a failed write with
    // `eprintln!`, which panics on EPIPE, in whichever task was logging.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal, and never with NO_COLOR set (no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
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
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Cancel first: nothing that happens while logging may keep the
        // signal from taking effect.
        t.cancel();
        tracing::info!("{name}: finishing in-flight work, releasing locks");
    });
    Ok(token)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report(format_args!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) if e.is::<ops::Usage>() => {
            report(format_args!("error: {e:#}"));
            ExitCode::from(ops::EXIT_USAGE)
        }
        Err(e) => {
            report(format_args!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr, ignoring a closed stderr (unlike `eprintln!`,
/// which would panic and turn exit code 1 into 101).
fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs the command; `Ok` carries the exit code (some commands report
/// findings through it), `Err` exits 1 ([`ops::Usage`]: 2).
async fn dispatch(command: Command) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match command {
        Command::Run { config, replica_id } => done(run(config, replica_id).await),
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim {
            config,
            listen,
            apps,
            expires_in,
            overlap,
        } => done(sim(config, listen, apps, expires_in, overlap).await),
        Command::Demo(args) => done(demo::run(args).await),
        Command::Get(args) => done(ops::get::run(args).await),
        Command::Status(args) => ops::status::run(args).await,
        Command::Refresh(args) => ops::refresh::run(args).await,
        Command::Authorizers(args) => ops::authorizers::run(args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "wxtoken", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url, timeout } => probe(&url, timeout).await,
    }
}

/// `wxtoken probe`: 0 when `url` answers 200 within `timeout`.
async fn probe(url: &str, timeout: Duration) -> Result<ExitCode> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    match http.get(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("probe: HTTP {}", r.status().as_u16());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("probe: {}", e.without_url());
            Ok(ExitCode::FAILURE)
        }
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
    let reloads = reload_on_sighup(config, shutdown.clone())?;
    let span = tracing::info_span!("replica", id = %replica);
    wxtoken_refresher::run(cfg, replica, shutdown, reloads)
        .instrument(span)
        .await
        .context("refresher")
}

/// On SIGHUP, reads `path` again and passes the config on. An invalid file
/// is reported (naming the field) and changes nothing.
fn reload_on_sighup(
    path: PathBuf,
    shutdown: CancellationToken,
) -> Result<tokio::sync::mpsc::Receiver<wxtoken_refresher::Config>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {}
                _ = shutdown.cancelled() => return,
            }
            match wxtoken_refresher::Config::load(&path) {
                Ok(cfg) => {
                    for w in &cfg.warnings {
                        tracing::warn!("{w}");
                    }
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the credentials");
                    if tx.send(cfg).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the config file is invalid; keeping the credentials in use")
                }
            }
        }
    });
    Ok(rx)
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
    if !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "THE SIMULATOR IS LISTENING ON A NON-LOOPBACK ADDRESS: its admin API under /_sim/ has no \
             authentication, so anyone who can reach {listen} can add apps, inject faults and read \
             evidence. It is a test double: listen on 127.0.0.1 unless this network is trusted"
        );
    }
    tracing::info!(%listen, apps = cfg.app_count(), "WeChat simulator listening; admin API under /_sim/");
    wxtoken_sim::serve(cfg, listen, shutdown.cancelled_owned())
        .await
        .with_context(|| format!("simulator on {listen}"))
}
