//! An etcd member spoken to through its JSON gateway (`POST /v3/...`), as
//! the tests of the etcd example (`examples/etcd`) do on each stack: put,
//! get, membership and health.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::{curl, http};

/// `POST /v3/<path>` with `body` to the member at `ip`.
pub fn v3(ip: &str, path: &str, body: &str) -> Option<String> {
    curl(&[
        "-m",
        "3",
        "-X",
        "POST",
        "-d",
        body,
        &format!("http://{ip}:2379/v3/{path}"),
    ])
}

/// Puts `key` = `value` through the member at `ip`; whether it took it.
pub fn put(ip: &str, key: &str, value: &str) -> bool {
    let body = serde_json::json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)});
    v3(ip, "kv/put", &body.to_string()).is_some_and(|a| a.contains("\"header\""))
}

/// The value of `key` read through the member at `ip`.
pub fn get(ip: &str, key: &str) -> Option<String> {
    let body = serde_json::json!({"key": STANDARD.encode(key)});
    let answer: serde_json::Value =
        serde_json::from_str(&v3(ip, "kv/range", &body.to_string())?).ok()?;
    let value = STANDARD.decode(answer["kvs"][0]["value"].as_str()?).ok()?;
    String::from_utf8(value).ok()
}

/// Whether the member serving clients at `client` (`host:port`) answers
/// and leads its cluster (its `etcd_server_is_leader` gauge).
pub fn leads(client: &str) -> bool {
    let (code, page) = http(&[&format!("http://{client}/metrics")]);
    code == 200 && page.lines().any(|l| l == "etcd_server_is_leader 1")
}

/// How many members the member at `ip` knows, and whether it says it is
/// healthy.
pub fn cluster_seen_from(ip: &str) -> (usize, bool) {
    let members = v3(ip, "cluster/member/list", "{}")
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|m| m["members"].as_array().map(Vec::len))
        .unwrap_or(0);
    let health = curl(&["-m", "3", &format!("http://{ip}:2379/health")]).unwrap_or_default();
    (members, health.contains("\"health\":\"true\""))
}
