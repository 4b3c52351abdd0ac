//! What the benchmarks share: Redis command counts and process usage.

/// Redis commands so far: (all executed, including those inside Lua
/// scripts; sent by clients: `EVALSHA`, the scans' `ZRANGEBYSCORE` and the
/// due-queue index updates' `ZADD`, which the registration's index script
/// also runs inside).
pub async fn redis_calls(con: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("info");
    let mut all = 0;
    let mut sent = 0;
    for l in info.lines() {
        let Some((name, rest)) = l
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(":calls="))
        else {
            continue;
        };
        let calls: u64 = rest
            .split(',')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        all += calls;
        if matches!(name, "evalsha" | "zrangebyscore" | "zadd") {
            sent += calls;
        }
    }
    (all, sent)
}

/// (RSS in MB, CPU seconds) of a process.
pub fn proc_usage(pid: u32) -> (f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}
