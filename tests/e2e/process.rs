//! The replica as a process: a closed stderr (a log collector that went
//! away) neither stops refreshes nor makes SIGTERM ineffective.

use crate::common::{Env, Setup};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stderr_keeps_refreshing_and_sigterm_still_exits_zero() {
    let env = Env::start(Setup {
        credentials: 2,
        ..Setup::default()
    })
    .await;
    // RUST_LOG=debug: the replica writes to stderr all the time. Every write
    // after this drop fails with EPIPE.
    let (mut replica, pipe) = env.spawn_replica_stderr("replica-1", None, &[], Stdio::piped());
    drop(pipe.expect("a stderr pipe"));

    env.wait_all_stored(Duration::from_secs(10)).await;
    let mut con = env.redis_con().await;
    let first = env.token(&mut con, 0).await.unwrap();
    // A proactive refresh (lifetime 6 s, margin 2 s) still happens: the
    // tasks that log did not die.
    crate::common::eventually(
        Duration::from_secs(10),
        "refreshed with stderr closed",
        || {
            let (env, mut con, first) = (&env, con.clone(), first.clone());
            async move { env.token(&mut con, 0).await.is_some_and(|t| t != first) }
        },
    )
    .await;

    assert_eq!(
        replica.terminate(Duration::from_secs(5)),
        Some(0),
        "SIGTERM with a closed stderr"
    );
}
