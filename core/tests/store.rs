//! The store layer against a real etcd: transactions, leases, and mirrors
//! that follow etcd through disconnects and compaction.

use std::time::Duration;

use petset_core::error::{Error, Violations};
use petset_core::store::mirror::{Mirror, Resume, follow};
use petset_core::store::page::{Continue, PageRequest};
use petset_core::store::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp};
use petset_core::testing::{self, Etcd, wait_for};

const DEADLINE: Duration = Duration::from_secs(20);

async fn put(store: &Store, key: &str, value: &str) -> i64 {
    let response = store
        .txn(Txn::new().and_then([TxnOp::put(key, serde_json::to_vec(value).unwrap(), None)]))
        .await
        .unwrap();
    response.header().unwrap().revision()
}

async fn put_on_lease(store: &Store, key: &str, lease: i64) {
    let put = TxnOp::put(key, "\"x\"", Some(PutOptions::new().with_lease(lease)));
    store.txn(Txn::new().and_then([put])).await.unwrap();
}

fn has(mirror: &Mirror, key: &str, value: &str) -> bool {
    mirror
        .read()
        .entries
        .get(key)
        .map(|v| v.as_ref() == serde_json::to_vec(value).unwrap().as_slice())
        .unwrap_or(false)
}

#[tokio::test]
async fn conditional_transactions_write_all_or_nothing() {
    let store = Store::connect(&testing::shared().store_config("txn"))
        .await
        .unwrap();
    let (a, b) = (store.key(&["a"]), store.key(&["b"]));
    put(&store, &a, "1").await;
    // The compare fails: neither key is written.
    let txn = Txn::new()
        .when([Compare::create_revision(a.clone(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(a.clone(), "\"2\"", None),
            TxnOp::put(b.clone(), "\"2\"", None),
        ]);
    assert!(!store.txn(txn).await.unwrap().succeeded());
    assert_eq!(store.get::<String>(&a).await.unwrap().unwrap().value, "1");
    assert!(store.get::<String>(&b).await.unwrap().is_none());
    let (items, revision) = store.list::<String>(&store.prefix(&[])).await.unwrap();
    assert_eq!(items.len(), 1);
    assert!(revision >= items[0].1.mod_revision);
}

#[tokio::test]
async fn keys_on_a_lease_go_when_it_is_revoked_and_keep_alive_reports_loss() {
    let store = Store::connect(&testing::shared().store_config("lease"))
        .await
        .unwrap();
    let lease = store.grant_lease(2).await.unwrap();
    let key = store.key(&["held"]);
    put_on_lease(&store, &key, lease).await;
    assert!(store.renew_lease(lease).await.unwrap() > 0);
    let mut kept = store.keep_alive(lease, 2);
    store.revoke_lease(lease).await.unwrap();
    assert!(store.get::<String>(&key).await.unwrap().is_none());
    tokio::time::timeout(DEADLINE, kept.lost())
        .await
        .expect("keep-alive notices the loss");
    assert!(matches!(
        store.renew_lease(lease).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.grant_lease(1).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_kept_alive_lease_outlives_its_ttl() {
    let store = Store::connect(&testing::shared().store_config("keepalive"))
        .await
        .unwrap();
    // etcd reports whole seconds left; with 5 the count visibly drops
    // between renewals (every third of the TTL) and jumps back at each.
    let lease = store.grant_lease(5).await.unwrap();
    let _kept = store.keep_alive(lease, 5);
    let key = store.key(&["alive"]);
    put_on_lease(&store, &key, lease).await;
    // Watch the lease's remaining TTL go down and come back up (renewed)
    // rather than timing it: a renewal is seen as a TTL that grew.
    let lowest = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    wait_for("the lease to be renewed", DEADLINE, || {
        let (store, lowest) = (store.clone(), lowest.clone());
        async move {
            let ttl = store
                .client()
                .lease_time_to_live(lease, None)
                .await
                .ok()?
                .ttl();
            let before = lowest.fetch_min(ttl, std::sync::atomic::Ordering::Relaxed);
            (ttl > before).then_some(())
        }
    })
    .await;
    assert!(store.get::<String>(&key).await.unwrap().is_some());
}

#[tokio::test]
async fn a_mirror_follows_puts_and_deletes() {
    let store = Store::connect(&testing::shared().store_config("mirror"))
        .await
        .unwrap();
    let prefix = store.prefix(&["things"]);
    put(&store, &format!("{prefix}a"), "1").await;
    let mirror = Mirror::spawn(&store, prefix.clone());
    wait_for("the initial list", DEADLINE, || async {
        has(&mirror, "a", "1").then_some(())
    })
    .await;
    let revision = put(&store, &format!("{prefix}b"), "2").await;
    mirror.wait_for_revision(revision).await;
    assert!(has(&mirror, "b", "2"));
    store
        .client()
        .delete(format!("{prefix}a"), None)
        .await
        .unwrap();
    wait_for("the delete", DEADLINE, || async {
        (!mirror.read().entries.contains_key("a")).then_some(())
    })
    .await;
    // Keys outside the prefix are not mirrored.
    put(&store, &store.key(&["other"]), "x").await;
    assert_eq!(mirror.read().entries.keys().collect::<Vec<_>>(), ["b"]);
}

#[tokio::test]
async fn a_mirror_resumes_after_etcd_restarts() {
    let mut etcd = Etcd::start();
    let store = Store::connect(&etcd.store_config("restart")).await.unwrap();
    let prefix = store.prefix(&["things"]);
    let mirror = Mirror::spawn(&store, prefix.clone());
    put(&store, &format!("{prefix}before"), "1").await;
    wait_for("the first put", DEADLINE, || async {
        has(&mirror, "before", "1").then_some(())
    })
    .await;
    etcd.restart();
    // Writes after the restart reach the mirror through a resumed watch.
    let written = wait_for("etcd to take writes again", DEADLINE, || async {
        let response = store
            .client()
            .put(
                format!("{prefix}after"),
                serde_json::to_vec("2").unwrap(),
                None,
            )
            .await
            .ok()?;
        Some(response.header()?.revision())
    })
    .await;
    mirror.wait_for_revision(written).await;
    assert!(has(&mirror, "after", "2") && has(&mirror, "before", "1"));
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_says_so_and_the_mirror_relists() {
    let store = Store::connect(&testing::shared().store_config("compact"))
        .await
        .unwrap();
    let prefix = store.prefix(&["things"]);
    let old = put(&store, &format!("{prefix}k"), "1").await;
    let mut newest = old;
    for i in 0..5 {
        newest = put(&store, &format!("{prefix}k{i}"), "x").await;
    }
    store.client().compact(newest, None).await.unwrap();
    // Resuming from a revision compacted away is reported, not papered over.
    let (updates, _keep) = tokio::sync::mpsc::channel(8);
    let resumed = follow(&store, &prefix, old + 1, &updates).await.unwrap();
    assert_eq!(resumed, Resume::Compacted);
    // A mirror started now lists and follows from the compacted store.
    let mirror = Mirror::spawn(&store, prefix.clone());
    let later = put(&store, &format!("{prefix}late"), "y").await;
    mirror.wait_for_revision(later).await;
    assert_eq!(mirror.read().entries.len(), 7);
}

#[tokio::test]
async fn a_range_larger_than_one_message_is_read_whole_at_one_revision() {
    let store = Store::connect(&testing::shared().store_config("large-range"))
        .await
        .unwrap();
    // 600 keys of 12 KiB: 7 MiB in all, past the client's 4 MiB message
    // limit, and more keys than one page; one key of 1 MiB on top, so
    // that a page of 256 such keys could not be one message either.
    let value = "v".repeat(12 << 10);
    for chunk in (0..600).collect::<Vec<_>>().chunks(50) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                TxnOp::put(
                    store.key(&["big", &format!("{i:04}")]),
                    serde_json::to_vec(&value).unwrap(),
                    None,
                )
            })
            .collect();
        store.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    put(&store, &store.key(&["big", "huge"]), &"h".repeat(1 << 20)).await;
    // Outside the prefix: not read.
    put(&store, &store.key(&["bigger"]), "x").await;
    let before = put(&store, &store.key(&["big", "zz-last"]), "last").await;
    let (kvs, revision) = store.list_raw(&store.prefix(&["big"])).await.unwrap();
    assert_eq!(kvs.len(), 602);
    assert!(revision >= before);
    let keys: Vec<String> = kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "every key once, in order");
    assert_eq!(keys[0], store.key(&["big", "0000"]));
    assert_eq!(keys[601], store.key(&["big", "zz-last"]));
    let total: usize = kvs.iter().map(|kv| kv.value().len()).sum();
    assert!(total > 4 << 20, "read {total} bytes, not past one message");
}

#[tokio::test]
async fn a_decoded_copy_keeps_values_with_their_revisions_and_skips_bad_ones() {
    let store = Store::connect(&testing::shared().store_config("decoded"))
        .await
        .unwrap();
    let prefix = store.prefix(&["things"]);
    put(&store, &format!("{prefix}a"), "1").await;
    let bad = store
        .txn(Txn::new().and_then([TxnOp::put(format!("{prefix}bad"), "not json", None)]))
        .await
        .unwrap();
    assert!(bad.succeeded());
    let copy = petset_core::store::mirror::Decoded::<String>::spawn(&store, prefix.clone());
    let b = put(&store, &format!("{prefix}b"), "2").await;
    let entries = wait_for("the copy to show b", DEADLINE, || async {
        let snapshot = copy.read()?;
        (snapshot.revision >= b).then(|| snapshot.entries.clone())
    })
    .await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(entries["b"].value, "2");
    assert_eq!(entries["b"].mod_revision, b);
    store
        .client()
        .delete(format!("{prefix}a"), None)
        .await
        .unwrap();
    wait_for("the delete", DEADLINE, || async {
        (!copy.read()?.entries.contains_key("a")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pages_are_one_snapshot_and_a_compacted_token_is_refused() {
    let store = Store::connect(&testing::shared().store_config("pages"))
        .await
        .unwrap();
    let prefix = store.prefix(&["items"]);
    for chunk in (0..1100).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("{prefix}{i:05}"), "\"x\"", None))
            .collect();
        store.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    // Asked for more than a page holds: pages of MAX_LIMIT (500).
    let mut page = PageRequest {
        limit: 10_000,
        from: None,
    };
    loop {
        let read = store.list_page(&prefix, &page).await.unwrap();
        sizes.push(read.kvs.len());
        seen.extend(
            read.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
        );
        if seen.len() == 500 {
            // Written after the first page: not in this list.
            put(&store, &format!("{prefix}00000-late"), "y").await;
            store
                .txn(Txn::new().and_then([TxnOp::delete(format!("{prefix}01099"), None)]))
                .await
                .unwrap();
        }
        let token = read.continue_token();
        let Some(next) = read.next else { break };
        let mut v = Violations::new();
        page.from = Continue::parse("continue", &token, &mut v);
        assert_eq!(page.from.as_ref(), Some(&next));
    }
    assert_eq!(sizes, [500, 500, 100]);
    let expected: Vec<String> = (0..1100).map(|i| format!("{prefix}{i:05}")).collect();
    assert_eq!(
        seen, expected,
        "every key once, in order, as at the first page"
    );

    // A token whose revision was compacted is refused, naming the field.
    let first = store
        .list_page(
            &prefix,
            &PageRequest {
                limit: 10,
                from: None,
            },
        )
        .await
        .unwrap();
    let newest = put(&store, &format!("{prefix}zz"), "z").await;
    store.client().compact(newest, None).await.unwrap();
    let expired = store
        .list_page(
            &prefix,
            &PageRequest {
                limit: 10,
                from: first.next,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&expired, Error::FailedPrecondition(m) if m.contains("continue")),
        "{expired:?}"
    );
}
