//! The uplink probe: a small authenticated UDP echo the client sends to the
//! concentrator over each uplink, so it notices a line that drops
//! everything while its carrier stays up (a blackhole).
//!
//! ```text
//! "MPBP" | version 1 | kind (1 request, 2 reply, 3 clock) | id length | client id
//!        | seq (u64 BE) | sent (unix ms, u64 BE)
//!        | [clock only: the concentrator's clock (unix ms, u64 BE)]
//!        | HMAC-SHA256 (32 bytes)
//! ```
//!
//! The MAC (see [`crate::auth::sign_probe`]) covers everything before it
//! with the client's key, in both directions, so neither end answers or
//! believes a forged probe. A *clock* answer is the reply to a request
//! that verified but whose `sent` lies outside the concentrator's window:
//! it echoes the request's seq and sent time (so it is bound to that
//! request) and tells the concentrator's clock, from which the client
//! corrects the offset of its timestamps ([`crate::clock`]). A client
//! that does not know kind 3 drops it. Pure and panic-free: bytes from the
//! network.

use crate::wire::convert::ClientId;

/// First bytes of every probe.
pub const MAGIC: [u8; 4] = *b"MPBP";
/// The only version.
pub const VERSION: u8 = 1;
/// Length of the MAC at the end.
pub const MAC_LEN: usize = 32;
/// Longest probe: fixed fields, the longest client id, a clock answer's
/// clock, the MAC.
pub const MAX_LEN: usize = 4 + 1 + 1 + 1 + ClientId::MAX_LEN + 8 + 8 + 8 + MAC_LEN;

/// Which way a probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Client to concentrator.
    Request,
    /// Concentrator back to the client.
    Reply,
    /// Concentrator back to the client, for a request outside its clock
    /// window: not answered as a reply, but with its clock.
    Clock {
        /// The concentrator's clock when it answered, unix milliseconds.
        concentrator_ms: u64,
    },
}

/// A probe's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Request or reply.
    pub kind: Kind,
    /// The client whose key signs it.
    pub client_id: ClientId,
    /// The client's sequence number, echoed in the reply.
    pub seq: u64,
    /// When the client sent the request (unix ms), echoed in the reply.
    pub sent_ms: u64,
}

/// Why bytes are not a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Too short, too long or not starting with the magic and version.
    #[error("not an mpbond probe")]
    NotAProbe,
    /// A kind other than request or reply.
    #[error("unknown probe kind {0}")]
    Kind(u8),
    /// The client id is not a valid id.
    #[error("probe with an invalid client id")]
    ClientId,
}

impl Probe {
    /// The bytes the MAC covers.
    pub fn body(&self) -> Vec<u8> {
        let id = self.client_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(MAX_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(match self.kind {
            Kind::Request => 1,
            Kind::Reply => 2,
            Kind::Clock { .. } => 3,
        });
        // A ClientId is at most 64 bytes.
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_ms.to_be_bytes());
        if let Kind::Clock { concentrator_ms } = self.kind {
            out.extend_from_slice(&concentrator_ms.to_be_bytes());
        }
        out
    }

    /// The probe on the wire: its body and `mac`.
    pub fn encode(&self, mac: &[u8; MAC_LEN]) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(mac);
        out
    }

    /// Reads a probe; returns it with its body (what the MAC covers) and
    /// its MAC, which the caller must verify before believing anything.
    pub fn decode(buf: &[u8]) -> Result<(Self, &[u8], [u8; MAC_LEN]), ProbeError> {
        if buf.len() < 7 + 16 + MAC_LEN || buf.len() > MAX_LEN {
            return Err(ProbeError::NotAProbe);
        }
        if buf[..4] != MAGIC || buf[4] != VERSION {
            return Err(ProbeError::NotAProbe);
        }
        let clock = match buf[5] {
            1 | 2 => false,
            3 => true,
            other => return Err(ProbeError::Kind(other)),
        };
        let id_len = usize::from(buf[6]);
        let body_len = 7 + id_len + 16 + if clock { 8 } else { 0 };
        if buf.len() != body_len + MAC_LEN {
            return Err(ProbeError::NotAProbe);
        }
        let id = std::str::from_utf8(&buf[7..7 + id_len]).map_err(|_| ProbeError::ClientId)?;
        let client_id = ClientId::try_from(id).map_err(|_| ProbeError::ClientId)?;
        let number = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&buf[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let seq = number(7 + id_len);
        let sent_ms = number(15 + id_len);
        let kind = match buf[5] {
            1 => Kind::Request,
            3 => Kind::Clock {
                concentrator_ms: number(23 + id_len),
            },
            _ => Kind::Reply,
        };
        let mut mac = [0; MAC_LEN];
        mac.copy_from_slice(&buf[body_len..]);
        Ok((
            Self {
                kind,
                client_id,
                seq,
                sent_ms,
            },
            &buf[..body_len],
            mac,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            kind: Kind::Request,
            client_id: ClientId::try_from("lab").expect("id"),
            seq: 7,
            sent_ms: 1_795_000_000_000,
        }
    }

    /// Seeds of `fuzz/fuzz_targets/probe.rs` (see `crate::fuzz_seeds`): a
    /// request and its reply signed with the target's key, and one with
    /// the longest id.
    #[test]
    fn write_fuzz_corpus() {
        let key = crate::auth::Key::from_bytes([7; 32]);
        let signed = |p: Probe| p.encode(&crate::auth::sign_probe(&key, &p.body()));
        let reply = Probe {
            kind: Kind::Reply,
            ..probe()
        };
        let long = Probe {
            client_id: ClientId::try_from("y".repeat(ClientId::MAX_LEN).as_str()).expect("id"),
            seq: u64::MAX,
            ..probe()
        };
        let clock = Probe {
            kind: Kind::Clock {
                concentrator_ms: 1_795_000_300_000,
            },
            ..probe()
        };
        let clock_long = Probe {
            kind: clock.kind,
            ..long.clone()
        };
        crate::fuzz_seeds::write(
            "probe",
            &[
                ("request", signed(probe())),
                ("reply", signed(reply)),
                ("request-long-id", signed(long)),
                ("clock", signed(clock)),
                ("clock-long-id", signed(clock_long)),
            ],
        );
    }

    #[test]
    fn round_trip() {
        let p = probe();
        let bytes = p.encode(&[0xab; MAC_LEN]);
        let (back, body, mac) = Probe::decode(&bytes).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(body, &p.body()[..]);
        assert_eq!(mac, [0xab; MAC_LEN]);
    }

    #[test]
    fn a_clock_answer_carries_the_concentrators_clock_under_the_mac() {
        let p = Probe {
            kind: Kind::Clock {
                concentrator_ms: 0x0102_0304_0506_0708,
            },
            ..probe()
        };
        let bytes = p.encode(&[0xab; MAC_LEN]);
        assert_eq!(bytes.len(), probe().encode(&[0; MAC_LEN]).len() + 8);
        assert_eq!(bytes[5], 3);
        let (back, body, _) = Probe::decode(&bytes).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(
            &body[body.len() - 8..],
            &0x0102_0304_0506_0708u64.to_be_bytes()
        );
        // Not a reply with 8 bytes too many, nor a clock answer 8 short.
        let mut as_reply = bytes.clone();
        as_reply[5] = 2;
        assert_eq!(Probe::decode(&as_reply), Err(ProbeError::NotAProbe));
        let mut short = probe().encode(&[0; MAC_LEN]);
        short[5] = 3;
        assert_eq!(Probe::decode(&short), Err(ProbeError::NotAProbe));
        // The longest id fits.
        let long = Probe {
            client_id: ClientId::try_from("z".repeat(ClientId::MAX_LEN).as_str()).expect("id"),
            ..p
        };
        let bytes = long.encode(&[0; MAC_LEN]);
        assert_eq!(bytes.len(), MAX_LEN);
        assert_eq!(Probe::decode(&bytes).expect("decodes").0, long);
    }

    #[test]
    fn anything_else_is_refused_without_panicking() {
        let good = probe().encode(&[0; MAC_LEN]);
        for len in 0..good.len() {
            assert!(Probe::decode(&good[..len]).is_err(), "truncated to {len}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Probe::decode(&long), Err(ProbeError::NotAProbe));
        let mut kind = good.clone();
        kind[5] = 9;
        assert_eq!(Probe::decode(&kind), Err(ProbeError::Kind(9)));
        let mut id = good.clone();
        id[7] = b' ';
        assert_eq!(Probe::decode(&id), Err(ProbeError::ClientId));
        let mut id_len = good;
        id_len[6] = 200;
        assert_eq!(Probe::decode(&id_len), Err(ProbeError::NotAProbe));
        assert_eq!(Probe::decode(&[0xff; 80]), Err(ProbeError::NotAProbe));
    }
}
