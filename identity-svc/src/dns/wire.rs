//! DNS messages on the wire: the answer to one packet.
//!
//! Every question the index holds records for (A and AAAA of each pod and
//! service, SRV of each named port) is answered and encoded once per index
//! change, for a query in lower case with id 0, with and without EDNS. A
//! query for one of them is served by copying those bytes and patching in
//! its id, its RD and CD bits and its question as sent (so the letter case
//! a resolver randomised comes back, RFC 5452's 0x20 defence). Anything
//! else (other types, reverse names, misses, malformed or unusual packets)
//! is decoded with hickory-proto and answered by [`build`], the function
//! the encodings were made with.
//!
//! # Guarantees
//! - A pre-encoded answer is, up to id, RD/CD and the question's case,
//!   byte for byte what [`build`] gives for the same query: both come from
//!   [`build`].
//! - A UDP answer is never longer than the client's EDNS payload capped at
//!   [`UDP_PAYLOAD`] (512 bytes without EDNS): a longer one is sent with
//!   its records dropped and TC set, so the client asks again over TCP.
//!   The server advertises [`UDP_PAYLOAD`], whatever the client offers.
//! - Responses, and packets too short to hold a header, get no answer.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::ZoneIndex;

/// The UDP payload this server advertises and never exceeds (DNS Flag Day
/// 2020's 1232 bytes: no IP fragmentation on any usual path).
pub const UDP_PAYLOAD: u16 = 1232;

/// A UDP answer's limit for a query without EDNS (RFC 1035).
const PLAIN_UDP: usize = 512;

/// The header's length.
const HEADER: usize = 12;

/// The longest name on the wire, and the lookup key's length: the name
/// and the query type.
const MAX_NAME: usize = 255;
const MAX_KEY: usize = MAX_NAME + 2;

/// The OPT pseudo-record's type (RFC 6891).
const OPT: u16 = 41;

/// How a packet came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The answer to one question, encoded in advance.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// For a query without EDNS.
    plain: Box<[u8]>,
    /// For a query with EDNS: an OPT record closes the additional section.
    edns: Box<[u8]>,
    rcode: ResponseCode,
}

impl Encoded {
    /// `name`/`qtype` answered from `index` and encoded, with the key it is
    /// looked up by; `None` if hickory-proto cannot encode it.
    pub(crate) fn new(
        index: &ZoneIndex,
        name: &Name,
        qtype: RecordType,
    ) -> Option<(Box<[u8]>, Encoded)> {
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = false;
        query.add_query(Query::query(name.to_lowercase(), qtype));
        let plain = build(index, &query);
        query.set_edns(edns());
        let with_edns = build(index, &query);
        let rcode = plain.metadata.response_code;
        let plain = plain.to_vec().ok()?.into_boxed_slice();
        let edns = with_edns.to_vec().ok()?.into_boxed_slice();
        let (key, len) = key(&plain, question_name_end(&plain)?)?;
        Some((key[..len].into(), Encoded { plain, edns, rcode }))
    }
}

fn edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    edns
}

/// The largest UDP answer for a client that offered `payload`.
fn udp_limit(payload: Option<u16>) -> usize {
    payload.map_or(PLAIN_UDP, |p| {
        (p as usize).clamp(PLAIN_UDP, UDP_PAYLOAD as usize)
    })
}

/// Where the question's name ends (the offset after its root label), for
/// a name of plain labels starting right after the header.
fn question_name_end(packet: &[u8]) -> Option<usize> {
    let mut at = HEADER;
    loop {
        let len = *packet.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        // 0xC0 and above are compression pointers, 0x40..0xC0 reserved
        // label types: the general path decides.
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - HEADER > MAX_NAME - 1 {
            return None;
        }
    }
    Some(at)
}

/// The lookup key of the question whose name ends at `name_end`: the name
/// in lower case, then the query type.
fn key(packet: &[u8], name_end: usize) -> Option<([u8; MAX_KEY], usize)> {
    let name = packet.get(HEADER..name_end)?;
    let qtype = packet.get(name_end..name_end + 2)?;
    let mut key = [0u8; MAX_KEY];
    key[..name.len()].copy_from_slice(name);
    // Length bytes are at most 63, below 'A': lowering the whole name
    // lowers only its letters.
    key[..name.len()].make_ascii_lowercase();
    key[name.len()..name.len() + 2].copy_from_slice(qtype);
    Some((key, name.len() + 2))
}

/// A query simple enough for the pre-encoded answers: one question of
/// class IN in plain labels, nothing else but an optional OPT record.
struct Simple {
    /// The end of the question (name, type and class).
    question_end: usize,
    name_end: usize,
    /// The client's EDNS payload, when it sent OPT.
    payload: Option<u16>,
}

fn u16_at(packet: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
}

fn simple(packet: &[u8]) -> Option<Simple> {
    // QR clear, opcode QUERY, and no response code in a query.
    if packet.len() < HEADER || packet[2] & 0xF8 != 0 || packet[3] & 0x0F != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let name_end = question_name_end(packet)?;
    let question_end = name_end + 4;
    if u16_at(packet, name_end + 2)? != u16::from(hickory_proto::rr::DNSClass::IN) {
        return None;
    }
    let payload = if ar == 1 {
        // OPT: root name, type 41, payload, extended rcode, version,
        // flags, then its options (ignored, as the general path does).
        let at = question_end;
        let version = *packet.get(at + 6)?;
        let rdlen = u16_at(packet, at + 9)? as usize;
        if packet.get(at) != Some(&0)
            || u16_at(packet, at + 1)? != OPT
            || version != 0
            || at + 11 + rdlen != packet.len()
        {
            return None;
        }
        Some(u16_at(packet, at + 3)?)
    } else {
        if question_end != packet.len() {
            return None;
        }
        None
    };
    Some(Simple {
        question_end,
        name_end,
        payload,
    })
}

/// Answers `packet` into `out` (cleared first), with the response code it
/// carries; `None`: no answer is to be sent.
pub fn respond(
    index: &ZoneIndex,
    packet: &[u8],
    transport: Transport,
    out: &mut Vec<u8>,
) -> Option<ResponseCode> {
    out.clear();
    if let Some(query) = simple(packet)
        && let Some((key, len)) = key(packet, query.name_end)
        && let Some(encoded) = index.encoded.get(&key[..len])
    {
        let bytes = match query.payload {
            Some(_) => &encoded.edns,
            None => &encoded.plain,
        };
        if transport == Transport::Tcp || bytes.len() <= udp_limit(query.payload) {
            out.extend_from_slice(bytes);
            out[..2].copy_from_slice(&packet[..2]);
            // RD (recursion desired) and CD (checking disabled) are
            // copied from the query (RFC 1035, RFC 4035).
            out[2] |= packet[2] & 0x01;
            out[3] |= packet[3] & 0x10;
            out[HEADER..query.question_end].copy_from_slice(&packet[HEADER..query.question_end]);
            return Some(encoded.rcode);
        }
    }
    let (response, payload) = match Message::from_vec(packet) {
        Ok(request) if request.metadata.message_type == MessageType::Query => (
            build(index, &request),
            request.edns.as_ref().map(Edns::max_payload),
        ),
        Ok(_) => return None,
        Err(_) => {
            // Undecodable: FORMERR if it at least has a query's header.
            if packet.len() < HEADER || packet[2] & 0x80 != 0 {
                return None;
            }
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            (
                Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
                None,
            )
        }
    };
    let rcode = response.metadata.response_code;
    let mut bytes = response.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > udp_limit(payload) {
        bytes = response.truncate().to_vec().ok()?;
    }
    out.extend_from_slice(&bytes);
    Some(rcode)
}

/// The response to `request`, answered from `index`.
pub(crate) fn build(index: &ZoneIndex, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    if request.edns.is_some() {
        response.set_edns(edns());
    }
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    response.add_query(query.clone());
    let resolution = index.answer(query.name(), query.query_type());
    response.metadata.response_code = resolution.code;
    response.metadata.authoritative = resolution.authoritative;
    response.add_answers(resolution.answers.iter().cloned());
    response.add_authorities(resolution.soa.iter().cloned());
    response.add_additionals(resolution.additionals.iter().cloned());
    response
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;
    use crate::dns::tests::{index, pod, service};

    fn query(name: &str, qtype: RecordType, id: u16, edns: Option<u16>) -> Vec<u8> {
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            query.set_edns(edns);
        }
        query.to_vec().unwrap()
    }

    fn answer(index: &ZoneIndex, packet: &[u8], transport: Transport) -> Message {
        let mut out = Vec::new();
        respond(index, packet, transport, &mut out).expect("an answer");
        Message::from_vec(&out).unwrap()
    }

    #[test]
    fn pre_encoded_answers_are_the_built_ones_with_the_querys_id_flags_and_case() {
        let index = index(false);
        // A and AAAA of the two ready pods and of the service; the SRV.
        assert_eq!(index.encoded.len(), 2 * 2 + 2 + 1);
        for name in [
            "kubia-0.kubia.default.svc.cluster.local.",
            "KuBiA-1.kubia.DEFAULT.svc.cluster.local.",
            "kubia.default.svc.cluster.local.",
            "_HTTP._tcp.kubia.default.svc.cluster.local.",
        ] {
            for qtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
                for edns in [None, Some(1232), Some(4096)] {
                    let packet = query(name, qtype, 0xBEEF, edns);
                    let request = Message::from_vec(&packet).unwrap();
                    let Some((key, len)) = key(&packet, question_name_end(&packet).unwrap()) else {
                        panic!("no key for {name}")
                    };
                    let pre_encoded = index.encoded.contains_key(&key[..len]);
                    let got = answer(&index, &packet, Transport::Udp);
                    assert_eq!(got, build(&index, &request), "{name} {qtype} {edns:?}");
                    assert_eq!(got.metadata.id, 0xBEEF);
                    assert!(got.metadata.recursion_desired, "RD copied");
                    // The question comes back as asked, letter case and all.
                    let mut out = Vec::new();
                    respond(&index, &packet, Transport::Udp, &mut out);
                    let end = question_name_end(&packet).unwrap();
                    assert_eq!(out[HEADER..end], packet[HEADER..end], "{name}");
                    if qtype != RecordType::SRV || name.starts_with('_') {
                        assert!(
                            pre_encoded || got.answers.is_empty(),
                            "{name} {qtype}: answered, but not in advance"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn udp_answers_over_the_limit_are_truncated_and_tcp_carries_them_whole() {
        let pods: Vec<_> = (0..100)
            .map(|i| pod(i, &format!("10.0.1.{i}"), true))
            .collect();
        let index = ZoneIndex::build(&Default::default(), 3, [service(false)], pods);
        let name = "kubia.default.svc.cluster.local.";
        // 100 A records: ~1.6 KB.
        for (edns, limit) in [(None, 512), (Some(4096), 1232), (Some(100), 512)] {
            let packet = query(name, RecordType::A, 7, edns);
            let mut out = Vec::new();
            respond(&index, &packet, Transport::Udp, &mut out).unwrap();
            assert!(out.len() <= limit, "{edns:?}: {} bytes", out.len());
            let got = Message::from_vec(&out).unwrap();
            assert!(got.metadata.truncation, "{edns:?}");
            assert!(got.answers.is_empty());
            assert_eq!(got.edns.is_some(), edns.is_some());
            if let Some(ours) = got.edns {
                assert_eq!(ours.max_payload(), UDP_PAYLOAD, "ours, not theirs");
            }
            let whole = answer(&index, &packet, Transport::Tcp);
            assert!(!whole.metadata.truncation);
            assert_eq!(whole.answers.len(), 100);
        }
    }

    #[test]
    fn responses_and_scraps_get_no_answer_and_garbage_gets_formerr() {
        let index = index(false);
        let mut out = Vec::new();
        let mut response = query("kubia.default.svc.cluster.local.", RecordType::A, 9, None);
        response[2] |= 0x80;
        assert_eq!(respond(&index, &response, Transport::Udp, &mut out), None);
        assert_eq!(respond(&index, &[1, 2, 3], Transport::Udp, &mut out), None);
        let mut garbage = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[200; 20]);
        assert_eq!(
            respond(&index, &garbage, Transport::Udp, &mut out),
            Some(ResponseCode::FormErr)
        );
        assert_eq!(Message::from_vec(&out).unwrap().metadata.id, 0x1234);
        // Two questions: the general path, FORMERR.
        let mut two = Message::new(5, MessageType::Query, OpCode::Query);
        for _ in 0..2 {
            two.add_query(Query::query(
                Name::from_ascii("kubia.default.svc.cluster.local.").unwrap(),
                RecordType::A,
            ));
        }
        let got = answer(&index, &two.to_vec().unwrap(), Transport::Udp);
        assert_eq!(got.metadata.response_code, ResponseCode::FormErr);
    }
}
