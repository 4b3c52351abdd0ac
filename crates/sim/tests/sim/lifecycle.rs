//! Starting and stopping: `Simulator::start` on a free port, `base_url`, and `serve` (the
//! `wxtoken sim` entry point) running until its shutdown future completes.

use std::time::Duration;

use wxtoken_sim::{serve, SimConfig};

use crate::common::*;

#[tokio::test]
async fn start_picks_a_free_port_and_base_url_has_no_trailing_slash() {
    let h = Harness::start(fast()).await;
    let addr = h.sim.local_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(
        h.sim.base_url(),
        format!("http://127.0.0.1:{}", addr.port())
    );
    let other = Harness::start(fast()).await;
    assert_ne!(other.sim.local_addr(), addr);
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    // Find a free port, then hand it to `serve`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = SimConfig::default().with_app(APPID, SECRET);
    let server = tokio::spawn(serve(config, addr, async move {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!(
        "http://{addr}/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}"
    );
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(resp) = http.get(&url).send().await {
            answer = Some(wechat_json(resp).await);
            break;
        }
        io_retry_backoff().await;
    }
    let answer = answer.expect("serve answers");
    assert_eq!(answer["expires_in"], 7200, "WeChat timing by default");

    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(http.get(&url).send().await.is_err());
}

#[tokio::test]
async fn serve_reports_a_taken_address() {
    let h = Harness::start(fast()).await;
    let err = serve(SimConfig::default(), h.sim.local_addr(), async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}
