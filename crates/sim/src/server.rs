//! The HTTP server: routes WeChat's paths and `/_sim/` to their modules, accepts connections,
//! and stops serving on request without waiting for hung requests.
//!
//! Uses hyper directly (not `axum::serve`) so that shutdown can abort every open connection,
//! including ones held by a `hang` fault or idle keep-alive ones. Must not: contain WeChat
//! rules (those live in the product modules), or log request parameters (they carry secrets).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::admin::{self, Admin};
use crate::config::SimConfig;
use crate::state::Shared;
use crate::{authorizer, business, component, ticket, token, wecom};

/// A running simulator, serving in a background tokio task.
///
/// Dropping it stops serving too; [`Simulator::shutdown`] additionally waits until the server
/// task is gone.
pub struct Simulator {
    addr: SocketAddr,
    admin: Admin,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Validates the config, binds `addr` (`127.0.0.1:0` picks a free port) and serves in a
    /// tokio task. An invalid config is an `InvalidInput` error.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> io::Result<Simulator> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&config));
        let admin = Admin::new(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let mut pushers = component::spawn_pushers(&shared);
        wecom::spawn_pushers(&shared, &mut pushers);
        let task = tokio::spawn(async move {
            // Dropped (stopping every pusher) when the server stops or is aborted.
            let _pushers = pushers;
            run(listener, router(shared), async move {
                // Either an explicit stop or the sender being dropped.
                let _ = stopped.await;
            })
            .await;
        });
        tracing::info!(%addr, apps = config.app_count(), "wechat simulator listening");
        Ok(Simulator {
            addr,
            admin,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash. Point WeChat clients here instead of
    /// `https://api.weixin.qq.com`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/qyapi`, without a trailing slash: the WeCom (企业微信) base
    /// URL, to use instead of `https://qyapi.weixin.qq.com` (WeCom's paths are served under
    /// `/qyapi` because they overlap WeChat's).
    pub fn wecom_base_url(&self) -> String {
        format!("http://{}{}", self.addr, wecom::BASE_PATH)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle for scripting and inspecting the simulator in-process.
    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// Stops serving: closes the listener and every open connection, without waiting for
    /// in-flight (e.g. hung) requests.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a simulator on `addr` until `shutdown` completes (for the `wxtoken sim` command).
/// Returns an error if the config is invalid or the address cannot be bound.
pub async fn serve(
    config: SimConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, apps = config.app_count(), "wechat simulator listening");
    let shared = Arc::new(Shared::new(&config));
    let mut pushers = component::spawn_pushers(&shared);
    wecom::spawn_pushers(&shared, &mut pushers);
    run(listener, router(shared), shutdown).await;
    drop(pushers);
    tracing::info!(addr = %local, "wechat simulator stopped");
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/cgi-bin/token", get(token::classic))
        .route(
            "/cgi-bin/stable_token",
            get(token::stable_wrong_method).post(token::stable),
        )
        .route("/cgi-bin/ticket/getticket", get(ticket::get_ticket))
        .route(
            "/cgi-bin/component/api_component_token",
            post(component::component_token),
        )
        .route(
            "/cgi-bin/component/api_start_push_ticket",
            post(component::start_push_ticket),
        )
        .route(
            "/cgi-bin/component/api_query_auth",
            post(authorizer::query_auth),
        )
        .route(
            "/cgi-bin/component/api_authorizer_token",
            post(authorizer::authorizer_token),
        )
        .route(
            "/cgi-bin/component/api_get_authorizer_list",
            post(authorizer::get_authorizer_list),
        )
        .route(
            "/cgi-bin/get_api_domain_ip",
            get(business::get_api_domain_ip).post(business::get_api_domain_ip),
        )
        .nest(wecom::BASE_PATH, wecom::router())
        .nest("/_sim", admin::router())
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("no route for {method} {}", uri.path()) })),
    )
        .into_response()
}

/// Accepts connections until `shutdown`, then drops (aborts) every connection task.
async fn run(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_connection(stream, peer, app.clone()));
                }
                Err(e) => {
                    // E.g. too many open files: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Router) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "simulator connection ended with an error");
    }
}
