//! The DNS messages nook's resolver reads and writes: one question per
//! query (what every stub resolver sends), answers of A records only.
//!
//! The guest controls every byte of a query, so parsing is bounds-checked
//! throughout and refuses compression pointers (queries never need them).

use std::net::Ipv4Addr;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// TTL of every answer: short, so a guest re-asks and the grants it
/// earns stay current.
const ANSWER_TTL: u32 = 30;
const HEADER_LEN: usize = 12;

/// A DNS response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// A query that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("dns message shorter than its header")]
    Short,
    #[error("dns message is a response, not a query")]
    NotQuery,
    /// The header parsed; the rest did not (answer with this rcode).
    #[error("dns query is malformed ({rcode:?})")]
    Malformed { id: u16, rd: bool, rcode: Rcode },
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub id: u16,
    /// Recursion desired (echoed back).
    pub rd: bool,
    /// Lower-case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as sent, echoed in the answer.
    question: Vec<u8>,
}

/// Parses a query of one question.
pub fn parse_query(msg: &[u8]) -> Result<DnsQuery, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Short);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let rd = flags & 0x0100 != 0;
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotQuery);
    }
    let malformed = |rcode| DnsError::Malformed { id, rd, rcode };
    if (flags >> 11) & 0xf != 0 {
        return Err(malformed(Rcode::NotImp));
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if qdcount != 1 {
        return Err(malformed(Rcode::FormErr));
    }
    let mut pos = HEADER_LEN;
    let mut name = String::new();
    loop {
        let len = *msg.get(pos).ok_or(malformed(Rcode::FormErr))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            // Compression pointers (0xc0) and reserved label types.
            return Err(malformed(Rcode::FormErr));
        }
        let label = msg.get(pos..pos + len).ok_or(malformed(Rcode::FormErr))?;
        pos += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(malformed(Rcode::FormErr));
            }
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > 253 {
            return Err(malformed(Rcode::FormErr));
        }
    }
    let tail = msg.get(pos..pos + 4).ok_or(malformed(Rcode::FormErr))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(DnsQuery {
        id,
        rd,
        name,
        qtype,
        qclass,
        question: msg[HEADER_LEN..pos + 4].to_vec(),
    })
}

fn header(id: u16, rd: bool, rcode: Rcode, qd: u16, an: u16) -> Vec<u8> {
    let flags: u16 = 0x8000 | if rd { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
    let mut out = Vec::with_capacity(64);
    for v in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// The answer to `q`: `rcode`, and for an A query one record per address.
pub fn answer(q: &DnsQuery, rcode: Rcode, ips: &[Ipv4Addr]) -> Vec<u8> {
    let records: &[Ipv4Addr] = if rcode == Rcode::NoError && q.qtype == TYPE_A {
        ips
    } else {
        &[]
    };
    let mut out = header(q.id, q.rd, rcode, 1, records.len() as u16);
    out.extend_from_slice(&q.question);
    for ip in records {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ANSWER_TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// The answer to a query whose header parsed but whose body did not.
pub fn error_answer(id: u16, rd: bool, rcode: Rcode) -> Vec<u8> {
    header(id, rd, rcode, 0, 0)
}

/// A query for `name` (tests and benchmarks act as a guest with it).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [id, 0x0100, 1, 0, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The rcode and A records of a response (for tests and benchmarks).
pub fn parse_answer(msg: &[u8]) -> Option<(u16, Rcode, Vec<Ipv4Addr>)> {
    let q = parse_query_section(msg)?;
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = match msg[3] & 0xf {
        0 => Rcode::NoError,
        1 => Rcode::FormErr,
        2 => Rcode::ServFail,
        3 => Rcode::NxDomain,
        4 => Rcode::NotImp,
        _ => Rcode::Refused,
    };
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = q;
    let mut ips = Vec::new();
    for _ in 0..ancount {
        let rec = msg.get(pos..pos + 12)?;
        let rdlen = u16::from_be_bytes([rec[10], rec[11]]) as usize;
        let data = msg.get(pos + 12..pos + 12 + rdlen)?;
        if u16::from_be_bytes([rec[2], rec[3]]) == TYPE_A && rdlen == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 12 + rdlen;
    }
    Some((id, rcode, ips))
}

/// The offset just past the question section of a one-question message.
fn parse_query_section(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER_LEN || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut pos = HEADER_LEN;
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        pos += len;
    }
    (pos + 4 <= msg.len()).then_some(pos + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_query_round_trips_through_an_answer() {
        let q = build_query(0x1234, "Allowed.Test.", TYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.name, "allowed.test");
        assert_eq!((parsed.id, parsed.qtype, parsed.rd), (0x1234, TYPE_A, true));
        let ip = Ipv4Addr::new(10, 0, 2, 2);
        let a = answer(&parsed, Rcode::NoError, &[ip]);
        assert_eq!(parse_answer(&a), Some((0x1234, Rcode::NoError, vec![ip])));
        let nx = answer(&parsed, Rcode::NxDomain, &[ip]);
        assert_eq!(parse_answer(&nx), Some((0x1234, Rcode::NxDomain, vec![])));
        // AAAA: no records, the name still exists.
        let q6 = parse_query(&build_query(1, "x.test", 28)).unwrap();
        assert_eq!(
            parse_answer(&answer(&q6, Rcode::NoError, &[ip])),
            Some((1, Rcode::NoError, vec![]))
        );
    }

    #[test]
    fn malformed_queries_are_refused_precisely() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Short));
        let mut q = build_query(7, "a.test", TYPE_A);
        q[2] |= 0x80;
        assert_eq!(parse_query(&q), Err(DnsError::NotQuery));
        let mut q = build_query(7, "a.test", TYPE_A);
        q[12] = 0xc0; // a compression pointer
        assert!(matches!(
            parse_query(&q),
            Err(DnsError::Malformed {
                id: 7,
                rcode: Rcode::FormErr,
                ..
            })
        ));
        let q = build_query(7, "a.test", TYPE_A);
        assert!(parse_query(&q[..q.len() - 1]).is_err());
        let mut q = build_query(7, "a b.test", TYPE_A);
        q[14] = b' ';
        assert!(parse_query(&q).is_err());
        assert_eq!(
            error_answer(7, true, Rcode::FormErr)[3] & 0xf,
            Rcode::FormErr as u8
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_query(&bytes);
            let _ = parse_answer(&bytes);
        }
    }
}
