//! Revisions of a set's pod template (Kubernetes' ControllerRevisions).
//!
//! A revision is named `<set>-<hash>` after a hash of the template's
//! canonical JSON, so the same template always makes the same name: applying
//! an old template again finds its revision (and gives it the next number)
//! rather than making a new one, and pods made from it count as updated.
//!
//! # Rules (Kubernetes' `statefulset_control.go`, `getStatefulSetRevisions`
//! and `truncateHistory`)
//! - The update revision is the spec's template's ([`revision_name`]). It is
//!   recorded with the next number unless it is the newest already; a
//!   revision applied again keeps its creation time ([`next_record`]).
//! - The current revision is the status's while that revision still exists,
//!   else the update revision ([`current_revision`]).
//! - History: every revision that no pod, the current revision nor the
//!   update revision uses; the oldest beyond `revisionHistoryLimit` are
//!   pruned ([`to_prune`]).
//! - A pod of a revision is made from that revision's template; one whose
//!   record is gone is made from the update template ([`template_of`]).

use std::collections::BTreeSet;
use std::hash::Hasher as _;
use std::time::SystemTime;

use petset_core::store::Versioned;
use petset_proto::v1;
use serde_json::Value;

use crate::records::RevisionRecord;

/// The hash part of a revision name: 10 hex digits of FNV-1a over the
/// template's canonical JSON (object keys sorted).
pub fn template_hash(template: &v1::PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).expect("templates serialize");
    let mut text = String::new();
    canonical(&value, &mut text);
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(text.as_bytes());
    let hex = format!("{:016x}", hasher.finish());
    hex[6..].to_string()
}

/// `<set>-<hash>`.
pub fn revision_name(set: &str, template: &v1::PodTemplateSpec) -> String {
    format!("{set}-{}", template_hash(template))
}

/// The record to write for `update_revision`, or `None` when it is the
/// newest stored revision already. `stored` is sorted by number.
pub fn next_record(
    stored: &[Versioned<RevisionRecord>],
    update_revision: &str,
    template: &v1::PodTemplateSpec,
    now: SystemTime,
) -> Option<RevisionRecord> {
    let newest = stored.last().map(|r| r.value.revision).unwrap_or(0);
    let existing = stored.iter().find(|r| r.value.name == update_revision);
    if existing.is_some_and(|r| r.value.revision == newest) {
        return None;
    }
    Some(RevisionRecord {
        name: update_revision.to_string(),
        revision: newest + 1,
        template: template.clone(),
        created: existing.map(|e| e.value.created).unwrap_or(now),
    })
}

/// The set's current revision: `status` (the status's currentRevision)
/// while that revision is stored or is the update revision, else the
/// update revision.
pub fn current_revision(
    status: Option<&str>,
    stored: &[Versioned<RevisionRecord>],
    update_revision: &str,
) -> String {
    status
        .filter(|r| {
            !r.is_empty() && (*r == update_revision || stored.iter().any(|s| s.value.name == *r))
        })
        .unwrap_or(update_revision)
        .to_string()
}

/// The revisions to delete: of those not in `live` (the revisions pods,
/// the current and the update revision use), all but the newest `limit`.
/// `stored` is sorted by number, oldest first.
pub fn to_prune<'a>(
    stored: &'a [Versioned<RevisionRecord>],
    live: &BTreeSet<String>,
    limit: usize,
) -> Vec<&'a Versioned<RevisionRecord>> {
    let history: Vec<_> = stored
        .iter()
        .filter(|r| !live.contains(&r.value.name))
        .collect();
    let excess = history.len().saturating_sub(limit);
    history[..excess].to_vec()
}

/// The template pods of `revision` are made from.
pub fn template_of(
    revision: &str,
    update_revision: &str,
    update_template: &v1::PodTemplateSpec,
    stored: &[Versioned<RevisionRecord>],
) -> v1::PodTemplateSpec {
    if revision == update_revision {
        return update_template.clone();
    }
    stored
        .iter()
        .find(|r| r.value.name == revision)
        .map(|r| r.value.template.clone())
        .unwrap_or_else(|| update_template.clone())
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str, labels: &[(&str, &str)]) -> v1::PodTemplateSpec {
        v1::PodTemplateSpec {
            metadata: Some(v1::ObjectMeta {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(v1::PodSpec {
                containers: vec![v1::Container {
                    name: "app".into(),
                    image: image.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn same_template_same_name_whatever_the_map_order() {
        let a = template(
            "kubia-pet",
            &[("app", "kubia"), ("tier", "web"), ("z", "1")],
        );
        let b = template(
            "kubia-pet",
            &[("z", "1"), ("tier", "web"), ("app", "kubia")],
        );
        assert_eq!(revision_name("kubia", &a), revision_name("kubia", &b));
        assert_eq!(template_hash(&a).len(), 10);
        let c = template("kubia-pet:v2", &[("app", "kubia")]);
        assert_ne!(template_hash(&a), template_hash(&c));
    }

    fn stored(names: &[&str]) -> Vec<Versioned<RevisionRecord>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Versioned {
                value: RevisionRecord {
                    name: name.to_string(),
                    revision: i as i64 + 1,
                    template: template(name, &[]),
                    created: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i as u64),
                },
                mod_revision: 100 + i as i64,
                create_revision: 100 + i as i64,
                lease: 0,
            })
            .collect()
    }

    #[test]
    fn a_new_template_gets_the_next_number_and_an_old_one_keeps_its_birth() {
        let s = stored(&["w-a", "w-b"]);
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(99);
        assert_eq!(next_record(&s, "w-b", &template("w-b", &[]), now), None);
        let new = next_record(&s, "w-c", &template("w-c", &[]), now).expect("recorded");
        assert_eq!((new.revision, new.created), (3, now));
        // Reverting to w-a: the next number, its first creation time.
        let back = next_record(&s, "w-a", &template("w-a", &[]), now).expect("recorded");
        assert_eq!(back.revision, 3);
        assert_eq!(back.created, s[0].value.created);
        assert_eq!(
            next_record(&[], "w-a", &template("w-a", &[]), now).map(|r| r.revision),
            Some(1)
        );
    }

    #[test]
    fn the_current_revision_is_the_status_while_it_exists() {
        let s = stored(&["w-a", "w-b"]);
        assert_eq!(current_revision(Some("w-a"), &s, "w-b"), "w-a");
        assert_eq!(current_revision(Some("w-gone"), &s, "w-b"), "w-b");
        assert_eq!(current_revision(Some(""), &s, "w-b"), "w-b");
        assert_eq!(current_revision(None, &s, "w-b"), "w-b");
        // Not stored yet, but it is the update revision.
        assert_eq!(current_revision(Some("w-c"), &s, "w-c"), "w-c");
    }

    #[test]
    fn a_pod_of_a_pruned_revision_is_made_from_the_update_template() {
        let s = stored(&["w-a", "w-b"]);
        let update = template("w-c", &[]);
        assert_eq!(template_of("w-a", "w-c", &update, &s), s[0].value.template);
        assert_eq!(template_of("w-c", "w-c", &update, &s), update);
        assert_eq!(template_of("w-gone", "w-c", &update, &s), update);
    }

    proptest::proptest! {
        /// Pruning never touches a live revision, keeps exactly the newest
        /// `limit` of the others, and deletes the oldest first.
        #[test]
        fn pruning_keeps_live_revisions_and_the_newest_history(
            count in 0usize..20,
            live_mask in proptest::collection::vec(proptest::bool::ANY, 20),
            limit in 0usize..12,
        ) {
            let names: Vec<String> = (0..count).map(|i| format!("w-{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let s = stored(&refs);
            let live: BTreeSet<String> = names
                .iter()
                .zip(&live_mask)
                .filter(|(_, l)| **l)
                .map(|(n, _)| n.clone())
                .collect();
            let pruned: Vec<&str> = to_prune(&s, &live, limit)
                .iter()
                .map(|r| r.value.name.as_str())
                .collect();
            let history: Vec<&str> = refs.iter().copied().filter(|n| !live.contains(*n)).collect();
            proptest::prop_assert!(pruned.iter().all(|n| !live.contains(*n)));
            proptest::prop_assert_eq!(pruned.len(), history.len().saturating_sub(limit));
            proptest::prop_assert_eq!(&pruned[..], &history[..pruned.len()]);
        }
    }
}
