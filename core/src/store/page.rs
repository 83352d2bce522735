//! Lists in pages, as Kubernetes' `limit` and `continue` give them.
//!
//! A list asked with a `limit` answers at most that many keys (and at most
//! [`MAX_LIMIT`]) and, when more remain, a `continue` token. The token
//! carries the etcd revision of the first page and the last key given, so
//! every later page is read at that same revision: the pages together are
//! one consistent snapshot, as in Kubernetes. Once etcd has compacted that
//! revision the token is expired (`FAILED_PRECONDITION`, Kubernetes' 410
//! Gone): the client lists again from the start.
//!
//! A page may hold fewer items than the limit (filters apply after the
//! read, as Kubernetes' field selectors do); only an empty token ends a
//! list.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use etcd_client::{GetOptions, GetResponse, KeyValue};

use super::{Store, etcd_error, range_end, timed};
use crate::error::{Error, Result, Violations};

/// The most keys one page holds, whatever the limit asked: a page must
/// fit one gRPC message.
pub const MAX_LIMIT: u32 = 500;

/// Where a list resumes: the revision it reads at and the last key given
/// (below the list's prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    revision: i64,
    after: String,
}

impl Continue {
    /// The token's text, opaque to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.revision, self.after))
    }

    /// Reads a token from the request field `field`; an empty text is no
    /// token.
    pub fn parse(field: &str, text: &str, v: &mut Violations) -> Option<Continue> {
        if text.is_empty() {
            return None;
        }
        let parsed = URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                let (revision, after) = text.split_once(':')?;
                Some(Continue {
                    revision: revision.parse().ok().filter(|r: &i64| *r > 0)?,
                    after: after.to_string(),
                })
            });
        if parsed.is_none() {
            v.add(
                field,
                "is not a continue token this server gave; list again without it",
            );
        }
        parsed
    }
}

/// What to list: everything (`limit` 0) or one page.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// At most this many keys (capped at [`MAX_LIMIT`]); 0: all of them.
    pub limit: u32,
    /// Where the previous page ended.
    pub from: Option<Continue>,
}

impl PageRequest {
    /// The page a request's `limit` and `continue` fields ask for, their
    /// violations added to `v` (named `limit_field` and `continue_field`).
    pub fn parse(
        limit_field: &str,
        limit: i64,
        continue_field: &str,
        token: &str,
        v: &mut Violations,
    ) -> PageRequest {
        if limit < 0 {
            v.add(limit_field, "must be 0 (no limit) or more");
        }
        let from = Continue::parse(continue_field, token, v);
        if from.is_some() && limit <= 0 {
            v.add(
                continue_field,
                format!("is only valid with a positive {limit_field}"),
            );
        }
        PageRequest {
            limit: u32::try_from(limit.max(0))
                .unwrap_or(u32::MAX)
                .min(MAX_LIMIT),
            from,
        }
    }
}

/// One page of keys.
#[derive(Debug)]
pub struct Page {
    /// The keys, in order.
    pub kvs: Vec<KeyValue>,
    /// The revision every page of this list is read at.
    pub revision: i64,
    /// Where the next page starts; `None`: this was the last.
    pub next: Option<Continue>,
}

impl Page {
    /// The token to hand back to the client: empty after the last page.
    pub fn continue_token(&self) -> String {
        self.next.as_ref().map(Continue::encode).unwrap_or_default()
    }
}

impl Store {
    /// The page of keys under `prefix` that `page` asks for (every key,
    /// read as [`Store::list_raw`] does, when it sets no limit).
    pub async fn list_page(&self, prefix: &str, page: &PageRequest) -> Result<Page> {
        if page.limit == 0 {
            let (kvs, revision) = self.list_raw(prefix).await?;
            return Ok(Page {
                kvs,
                revision,
                next: None,
            });
        }
        let from = match &page.from {
            Some(from) => format!("{prefix}{}\0", from.after).into_bytes(),
            None => prefix.as_bytes().to_vec(),
        };
        let revision = page.from.as_ref().map_or(0, |f| f.revision);
        let options = GetOptions::new()
            .with_range(range_end(prefix.as_bytes()))
            .with_limit(i64::from(page.limit.min(MAX_LIMIT)))
            .with_revision(revision);
        let mut response = self.range(from, options, revision).await?;
        let revision = if revision > 0 {
            revision
        } else {
            response.header().map(|h| h.revision()).unwrap_or_default()
        };
        let more = response.more();
        let kvs = response.take_kvs();
        let next = match kvs.last() {
            Some(last) if more => Some(Continue {
                revision,
                after: String::from_utf8_lossy(&last.key()[prefix.len().min(last.key().len())..])
                    .into_owned(),
            }),
            _ => None,
        };
        Ok(Page {
            kvs,
            revision,
            next,
        })
    }

    /// The records kept beside a list's items (their statuses, their
    /// holders), as consistent with it as `read` is: for a whole list
    /// (`page` sets no limit) every key under `whole`; for a page, in one
    /// read at the page's revision, the span of `keys` (those of the
    /// page's items, in any order: only the span is read, so filter what
    /// comes back); nothing for an empty page.
    pub async fn beside(
        &self,
        page: &PageRequest,
        read: &Page,
        whole: &str,
        keys: impl Iterator<Item = String>,
    ) -> Result<Vec<KeyValue>> {
        if page.limit == 0 {
            return Ok(self.list_raw(whole).await?.0);
        }
        let (mut low, mut high) = (None::<String>, None::<String>);
        for key in keys {
            if low.as_ref().is_none_or(|l| key < *l) {
                low = Some(key.clone());
            }
            if high.as_ref().is_none_or(|h| key > *h) {
                high = Some(key);
            }
        }
        let (Some(low), Some(high)) = (low, high) else {
            return Ok(Vec::new());
        };
        let options = GetOptions::new()
            .with_range([high.as_bytes(), b"\0"].concat())
            .with_revision(read.revision);
        Ok(self
            .range(low.into_bytes(), options, read.revision)
            .await?
            .take_kvs())
    }

    /// One range read from `from`; at a `revision` (> 0) compacted away,
    /// the expired-token error.
    async fn range(
        &self,
        from: Vec<u8>,
        options: GetOptions,
        revision: i64,
    ) -> Result<GetResponse> {
        let read = timed("range", || {
            let (mut client, from, options) = (self.client.clone(), from.clone(), options.clone());
            async move { client.get(from, Some(options)).await }
        })
        .await;
        match read {
            Ok(response) => Ok(response),
            Err(etcd_client::Error::GRpcStatus(status))
                if revision > 0 && status.code() == tonic::Code::OutOfRange =>
            {
                Err(expired(revision))
            }
            Err(e) => Err(etcd_error(e)),
        }
    }
}

fn expired(revision: i64) -> Error {
    Error::FailedPrecondition(format!(
        "continue: the list's revision {revision} has been compacted (the token expired); \
         list again without it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_strangers_are_named() {
        let token = Continue {
            revision: 42,
            after: "default/web-1".into(),
        };
        let mut v = Violations::new();
        assert_eq!(
            Continue::parse("continue", &token.encode(), &mut v),
            Some(token)
        );
        assert_eq!(Continue::parse("continue", "", &mut v), None);
        assert!(v.into_result().is_ok());
        for bad in ["%%%", "bm90LWEtdG9rZW4", "MDpkZWZhdWx0"] {
            let mut v = Violations::new();
            assert_eq!(Continue::parse("continue", bad, &mut v), None, "{bad}");
            let error = v.into_result().unwrap_err().to_string();
            assert!(error.contains("continue"), "{error}");
        }
        let mut v = Violations::new();
        let page = PageRequest::parse("limit", 10_000, "continue", "", &mut v);
        assert_eq!(page.limit, MAX_LIMIT);
        PageRequest::parse("limit", -1, "continue", "", &mut v);
        assert!(v.into_result().unwrap_err().to_string().contains("limit"));
    }
}
