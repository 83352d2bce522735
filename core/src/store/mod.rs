//! The etcd store layer: typed reads, conditional writes, multi-key
//! transactions, leases, and a watch-fed mirror of a key range.
//!
//! # Guarantees
//! - Every key a [`Store`] touches lives under its root (`/petset` in
//!   production, one root per test), so several deployments or tests can share
//!   one etcd without seeing each other.
//! - A change that spans several keys is one etcd transaction built by the
//!   caller ([`Store::txn`]), guarded by compares on the revisions it read:
//!   it is all written or not at all.
//! - Values are JSON, so `etcdctl get --prefix /petset` shows what petset
//!   holds in words a person can read.
//!
//! # Layout
//! - [`leases`]: granting, renewing and keeping alive etcd leases.
//! - [`mirror`]: a local copy of a key range that follows etcd through a
//!   watch, resumed after disconnects and re-listed after compaction.

mod endpoints;
pub mod leases;
pub mod mirror;
pub mod page;

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue, TxnResponse};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

pub use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};

/// How to reach etcd and where petset's keys live in it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix every key lives under, e.g. `/petset`.
    pub root: String,
}

/// A handle on petset's keys in etcd. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    client: Client,
    root: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// A value as stored, with the revisions that make conditional writes possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// Revision of the last write of this key; compare on it to write only
    /// if nobody else wrote since.
    pub mod_revision: i64,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl Store {
    /// Connects to etcd. Fails with `Unavailable` when no endpoint answers.
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::invalid(
                "etcd endpoints",
                "at least one etcd endpoint is needed",
            ));
        }
        let root = config.root.trim_end_matches('/').to_string();
        if !root.starts_with('/') {
            return Err(Error::invalid(
                "etcd root",
                format!("must start with '/', got {:?}", config.root),
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| {
                Error::unavailable(
                    format!("cannot connect to etcd at {}", config.endpoints.join(",")),
                    e,
                )
            })?;
        endpoints::watch(client.clone(), &config.endpoints);
        Ok(Store { client, root })
    }

    /// The prefix every key of this store starts with.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The full key for `parts` under the root: `<root>/<a>/<b>`.
    ///
    /// Callers pass validated names (DNS-1123), so no part can hold a `/`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.root.clone();
        for part in parts {
            key.push('/');
            key.push_str(part);
        }
        key
    }

    /// The key prefix for `parts`, with a trailing `/`, for range reads.
    pub fn prefix(&self, parts: &[&str]) -> String {
        let mut key = self.key(parts);
        key.push('/');
        key
    }

    /// A clone of the raw client, for what this layer does not wrap.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads one key and decodes its JSON value.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>> {
        let response = timed("get", || {
            let mut client = self.client.clone();
            async move { client.get(key, None).await }
        })
        .await
        .map_err(etcd_error)?;
        response.kvs().first().map(decode).transpose()
    }

    /// Reads several keys in one round trip, all at one revision (one
    /// transaction of gets), undecoded so that each may be of its own type:
    /// each key's value in order, `None` where it is absent.
    pub async fn get_raw_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let response = self.txn(Txn::new().and_then(ops)).await?;
        Ok(response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            })
            .collect())
    }

    /// Reads one key that must exist: [`Error::NotFound`] naming `kind` and
    /// `name` when it does not.
    pub async fn fetch<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: &'static str,
        name: impl Into<String>,
    ) -> Result<Versioned<T>> {
        self.get(key).await?.ok_or_else(|| Error::NotFound {
            kind,
            name: name.into(),
        })
    }

    /// Reads every key under `prefix` and decodes them, with the store
    /// revision the read saw. A value that does not decode (written by
    /// another version, or damaged) is logged and left out: one bad record
    /// must not make every list fail.
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Versioned<T>)>, i64)> {
        let (kvs, revision) = self.list_raw(prefix).await?;
        let items = kvs
            .iter()
            .filter_map(|kv| {
                let value = decode_or_skip(kv)?;
                Some((String::from_utf8_lossy(kv.key()).into_owned(), value))
            })
            .collect();
        Ok((items, revision))
    }

    /// Reads every key under `prefix` undecoded, with the store revision
    /// the read saw.
    ///
    /// The range is read in pages of at most [`PAGE`] keys, all at the
    /// revision of the first, so that the whole is one consistent read
    /// however large it is: one answer is bounded by the client's 4 MiB
    /// message limit, a range is not. A page refused as out of range (too
    /// large for one message, or its revision compacted meanwhile) is asked
    /// again half as large; refused at one key, the read starts over at the
    /// newest revision.
    pub async fn list_raw(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let end = range_end(prefix.as_bytes());
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut revision = 0;
        let mut limit = PAGE;
        loop {
            let from = match kvs.last() {
                Some(last) => [last.key(), b"\0"].concat(),
                None => prefix.as_bytes().to_vec(),
            };
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(limit)
                .with_revision(revision);
            let page = timed("range", || {
                let (mut client, from, options) =
                    (self.client.clone(), from.clone(), options.clone());
                async move { client.get(from, Some(options)).await }
            })
            .await;
            let mut response = match page {
                Ok(response) => response,
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange =>
                {
                    if limit > 1 {
                        limit /= 2;
                    } else {
                        kvs.clear();
                        revision = 0;
                        limit = PAGE;
                    }
                    continue;
                }
                Err(e) => return Err(etcd_error(e)),
            };
            if revision == 0 {
                revision = response.header().map(|h| h.revision()).unwrap_or_default();
            }
            let more = response.more();
            kvs.extend(response.take_kvs());
            if !more {
                return Ok((kvs, revision));
            }
            limit = (limit * 2).min(PAGE);
        }
    }

    /// Writes `value` at `key` only if nobody wrote the key since `over`
    /// was read (`None`: only if the key does not exist). Answers the
    /// value as written, or `None` when another writer came first.
    pub async fn put_over<T: Serialize, U>(
        &self,
        key: &str,
        value: T,
        over: Option<&Versioned<U>>,
    ) -> Result<Option<Versioned<T>>> {
        let expected = over.map(|o| o.mod_revision).unwrap_or(0);
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, encode(&value)?, None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Some(Versioned {
            value,
            mod_revision: revision,
            create_revision: over.map(|o| o.create_revision).unwrap_or(revision),
            lease: 0,
        }))
    }

    /// Deletes `key` only if nobody wrote it since `over` was read. Answers
    /// whether it was deleted.
    pub async fn delete_over<U>(&self, key: &str, over: &Versioned<U>) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                over.mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Runs one transaction: every multi-key change goes through here.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        timed("txn", || {
            let (mut client, txn) = (self.client.clone(), txn.clone());
            async move { client.txn(txn).await }
        })
        .await
        .map_err(etcd_error)
    }
}

/// Most keys one page of a range read asks for.
pub const PAGE: i64 = 256;

/// The end of the key range holding every key that starts with `prefix`
/// (etcd's `GetPrefix`): the prefix with its last byte below 0xff raised
/// by one and what follows it dropped; every key, for a prefix of 0xff
/// bytes only.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Runs one etcd request (sent again while its connection is refused, see
/// [`endpoints`]), recording its latency as
/// `petset_etcd_request_duration_seconds{op}`.
pub(crate) async fn timed<T, F, Fut>(
    op: &'static str,
    request: F,
) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let started = std::time::Instant::now();
    let answer = endpoints::retrying(request).await;
    metrics::histogram!("petset_etcd_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    answer
}

/// Encodes a value as stored.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal {
        message: "encoding a stored value".into(),
        source: Some(Box::new(e)),
    })
}

/// Decodes one stored key-value, or logs why it does not decode and
/// answers `None`: for reads over many records, where one written by
/// another version (or damaged) must not stop the others.
pub fn decode_or_skip<T: DeserializeOwned>(kv: &KeyValue) -> Option<Versioned<T>> {
    decode(kv)
        .inspect_err(|e| tracing::warn!(error = %e, "stored record does not decode; left out"))
        .ok()
}

/// Decodes one stored key-value.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<Versioned<T>> {
    let value = serde_json::from_slice(kv.value()).map_err(|e| Error::Internal {
        message: format!(
            "stored value at {:?} does not decode",
            String::from_utf8_lossy(kv.key())
        ),
        source: Some(Box::new(e)),
    })?;
    Ok(Versioned {
        value,
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    })
}

/// Maps an etcd error to the API error: a missing lease is the caller's
/// problem, everything else is etcd being out of reach.
///
/// Told apart by type, not by text: the only `NOT_FOUND` the KV and lease
/// calls petset makes can answer is etcd's `ErrGRPCLeaseNotFound`, and
/// etcd-client answers `LeaseKeepAliveError` when a keep-alive's first
/// answer has no TTL left (its other cause, a closed request channel,
/// cannot happen while the stream it was opened for is being read).
pub fn etcd_error(error: etcd_client::Error) -> Error {
    let lease_missing = match &error {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::NotFound,
        etcd_client::Error::LeaseKeepAliveError(_) => true,
        _ => false,
    };
    if lease_missing {
        return Error::NotFound {
            kind: "lease",
            name: "the given lease (expired or never granted)".into(),
        };
    }
    Error::unavailable("etcd request failed", error)
}

#[cfg(test)]
mod tests {
    use super::range_end;

    #[test]
    fn a_prefix_range_ends_past_its_last_key() {
        assert_eq!(range_end(b"/petset/pods/"), b"/petset/pods0");
        assert_eq!(range_end(b"a\xff\xff"), b"b");
        assert_eq!(range_end(b"\xff"), b"\0");
    }
}
