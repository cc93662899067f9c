//! The `list` answer, written as MessagePack straight from the registry's records.
//!
//! A listing is the daemon's one large answer: 10,000 sessions make about 3 MB. Through serde,
//! each of its 150,000 fields went through a serializer call for the key and another for the
//! value, and the `project::provider::id` scope was assembled in a buffer before being copied
//! in; that was most of the daemon's time for `sessionctl list --json`. Here each key is one
//! copy of constant bytes, and strings and integers are written in place.
//!
//! The bytes must stay exactly those serde writes for `Response<ListResult>`, which is what
//! clients decode: the tests compare the two for records with every optional field absent and
//! present, and strings and integers of every length class. A field added to `SessionInfo`
//! has to be added to [`Session::info`] (the compiler insists) and here (the tests insist).
//!
//! Everything is written to a `Vec`, which cannot fail, so nothing here returns an error.

use rmp::encode as mp;
use sessiond_proto::frame::HEADER_LEN;
use sessiond_proto::session::SessionId;

use crate::session::Session;

/// A `list` answer borrowing the registry's records. Encode it while the registry is held.
#[derive(Debug)]
pub struct Listing<'a> {
    pub sessions: Vec<&'a Session>,
    pub current: Option<SessionId>,
}

/// Bytes a typical record takes, so the buffer rarely has to grow (and copy) while filling.
const TYPICAL_RECORD: usize = 384;

/// A UUID's hyphenated form.
const ID_LEN: usize = 36;

/// How many records ahead of the one being written a record, and its strings, are fetched.
/// Measured: 8 and 4 (or 4 and 2) beat 16 and 8, whose lines were gone again before use.
const PREFETCH_RECORD: usize = 8;
const PREFETCH_STRINGS: usize = 4;

impl Listing<'_> {
    /// The whole response frame (length prefix included) answering request `id`.
    pub fn response_frame(&self, id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.sessions.len() * TYPICAL_RECORD);
        out.extend_from_slice(&[0; HEADER_LEN]);
        // Response { type, id, result }
        map_len(&mut out, 3);
        key(&mut out, "type");
        string(&mut out, "response");
        key(&mut out, "id");
        uint(&mut out, id);
        key(&mut out, "result");
        // ListResult { sessions, current? }
        map_len(&mut out, 1 + u32::from(self.current.is_some()));
        key(&mut out, "sessions");
        mp::write_array_len(&mut out, len32(self.sessions.len()))
            .expect("writing to a Vec cannot fail");
        for (i, s) in self.sessions.iter().enumerate() {
            // The records sit wherever the registry's map and the allocator put them, and a
            // listing arrives after other processes have had the caches: waiting for each
            // record, then for its strings, one miss at a time, cost twice the encoding itself
            // (3.8 against 0.9–1.6 ms for 10,000 sessions, interleaved). Ask for them a few
            // records ahead: first the record, then, once it has arrived, its strings.
            if let Some(ahead) = self.sessions.get(i + PREFETCH_RECORD) {
                prefetch(*ahead);
            }
            if let Some(ahead) = self.sessions.get(i + PREFETCH_STRINGS) {
                prefetch(ahead.cwd.as_ptr());
                if let Some(name) = &ahead.name {
                    prefetch(name.as_ptr());
                }
            }
            record(&mut out, s);
        }
        if let Some(current) = self.current {
            key(&mut out, "current");
            session_id(&mut out, current);
        }
        let len = len32(out.len() - HEADER_LEN);
        out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// One session in the wire shape of `SessionInfo`: the same fields in the same order, optional
/// ones omitted when absent, and no `owner` (which only `get` adds).
fn record(out: &mut Vec<u8>, s: &Session) {
    let fields = 11
        + u32::from(s.name.is_some())
        + u32::from(s.parent_id.is_some())
        + u32::from(s.provider_session_id.is_some())
        + u32::from(!s.aliases.is_empty());
    map_len(out, fields);
    key(out, "id");
    session_id(out, s.id);
    key(out, "scope");
    // `project::provider::id`, written in pieces rather than assembled first.
    mp::write_str_len(out, len32(s.project.len() + s.provider.len() + 4 + ID_LEN))
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(s.project.as_bytes());
    out.extend_from_slice(b"::");
    out.extend_from_slice(s.provider.as_bytes());
    out.extend_from_slice(b"::");
    hyphenated(out, s.id);
    key(out, "provider");
    string(out, &s.provider);
    key(out, "project");
    string(out, &s.project);
    key(out, "cwd");
    string(out, &s.cwd);
    if let Some(name) = &s.name {
        key(out, "name");
        string(out, name);
    }
    key(out, "phase");
    string(out, s.phase.as_str());
    key(out, "activity");
    string(out, s.activity.as_str());
    key(out, "created_at");
    uint(out, s.created_at);
    key(out, "updated_at");
    uint(out, s.updated_at);
    key(out, "last_active_at");
    uint(out, s.last_active_at);
    if let Some(parent) = s.parent_id {
        key(out, "parent_id");
        session_id(out, parent);
    }
    if let Some(provider_id) = &s.provider_session_id {
        key(out, "provider_session_id");
        string(out, provider_id);
    }
    if !s.aliases.is_empty() {
        key(out, "aliases");
        mp::write_array_len(out, len32(s.aliases.len())).expect("writing to a Vec cannot fail");
        for alias in &s.aliases {
            string(out, alias);
        }
    }
    key(out, "queue_length");
    uint(out, u64::from(s.queue_length));
}

/// A field name: every one is shorter than 32 bytes, so its header is the one byte of a fixstr.
fn key(out: &mut Vec<u8>, name: &'static str) {
    debug_assert!(name.len() < 32, "{name} needs a longer string header");
    out.push(0xa0 | name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    mp::write_str(out, s).expect("writing to a Vec cannot fail");
}

/// Integers in their smallest form, as serde's `u64` and `u32` are written.
fn uint(out: &mut Vec<u8>, n: u64) {
    mp::write_uint(out, n).expect("writing to a Vec cannot fail");
}

fn map_len(out: &mut Vec<u8>, len: u32) {
    mp::write_map_len(out, len).expect("writing to a Vec cannot fail");
}

/// An id as a string, the way `SessionId` serializes (36 bytes: a str8, not a fixstr).
fn session_id(out: &mut Vec<u8>, id: SessionId) {
    out.extend_from_slice(&[0xd9, ID_LEN as u8]);
    hyphenated(out, id);
}

/// The id's 36 characters, written straight into the buffer.
fn hyphenated(out: &mut Vec<u8>, id: SessionId) {
    let start = out.len();
    out.resize(start + ID_LEN, 0);
    id.0.hyphenated().encode_lower(&mut out[start..]);
}

/// Asks the CPU to start loading the cache line at `p`: a hint only, which cannot fault, even
/// for an address that is not mapped, and changes nothing but timing.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the intrinsic needs SSE, which every x86-64 CPU has; a prefetch reads nothing
    // the program can see and is allowed on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A length MessagePack can carry. Nothing the registry holds comes near 4 GiB; a frame that
/// did would be refused by every reader anyway.
fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("a listing part longer than 4 GiB")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sessiond_proto::envelope::Response;
    use sessiond_proto::frame;
    use sessiond_proto::methods::ListResult;
    use sessiond_proto::session::{Activity, Phase};

    use super::*;

    /// A session whose optional fields are all absent (`full` false) or all present, with
    /// strings of `len` bytes where the record allows free text.
    fn session(full: bool, len: usize, n: u64) -> Session {
        let text = |prefix: &str| {
            // Padded with ASCII so the length lands exactly on a header boundary.
            let mut s = prefix.to_string();
            while s.len() < len {
                s.push('x');
            }
            s
        };
        Session {
            id: SessionId::new_v4(),
            provider: Arc::from(text("claude")),
            project: Arc::from(text("/srv/a project/ünï")),
            cwd: text("/srv/a project/ünï/sub"),
            name: full.then(|| text("fix \"the\" bug")),
            phase: Phase::ALL[n as usize % Phase::ALL.len()],
            activity: Activity::ALL[n as usize % Activity::ALL.len()],
            created_at: n,
            updated_at: n.wrapping_mul(0x1_0001),
            last_active_at: u64::MAX - n,
            parent_id: full.then(SessionId::new_v4),
            provider_session_id: full.then(|| text("prov-1")),
            aliases: if full {
                (0..n as usize % 20)
                    .map(|i| text(&format!("old-{i}")))
                    .collect()
            } else {
                vec![]
            },
            queue_length: (n as u32).wrapping_mul(65_537),
        }
    }

    /// What serde writes for the same answer, through the types clients decode.
    fn through_serde(listing: &Listing, id: u64) -> Vec<u8> {
        let result = ListResult {
            sessions: listing.sessions.iter().map(|s| s.info()).collect(),
            current: listing.current,
        };
        frame::encode(&Response::new(id, result)).unwrap()
    }

    #[test]
    fn listing_bytes_are_exactly_what_serde_writes() {
        // String lengths across each MessagePack string header (fixstr, str8, str16, str32)
        // and integers across each width, with optional fields absent and present.
        let mut sessions = Vec::new();
        let mut n = 0u64;
        for len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            for full in [false, true] {
                sessions.push(session(full, len, n));
                n = n.wrapping_mul(300).wrapping_add(127);
            }
        }
        for current in [None, Some(sessions[3].id)] {
            for id in [0, 127, 128, 65_536, u64::from(u32::MAX) + 1] {
                let listing = Listing {
                    sessions: sessions.iter().collect(),
                    current,
                };
                let ours = listing.response_frame(id);
                assert!(
                    ours == through_serde(&listing, id),
                    "listing bytes differ from serde's (id {id}, current {current:?})"
                );
            }
        }
    }

    #[test]
    fn an_empty_listing_is_exactly_what_serde_writes() {
        let listing = Listing {
            sessions: vec![],
            current: None,
        };
        assert_eq!(listing.response_frame(7), through_serde(&listing, 7));
    }

    #[test]
    fn a_listing_decodes_as_the_result_clients_read() {
        let sessions: Vec<Session> = (0..3).map(|n| session(n == 1, 40, n)).collect();
        let listing = Listing {
            sessions: sessions.iter().collect(),
            current: Some(sessions[2].id),
        };
        let bytes = listing.response_frame(9);
        let len = u32::from_be_bytes(bytes[..HEADER_LEN].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_LEN, "length prefix");
        let back: Response<ListResult> = frame::decode(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back.id, 9);
        assert_eq!(back.result.current, Some(sessions[2].id));
        let infos: Vec<_> = sessions.iter().map(|s| s.info()).collect();
        assert_eq!(back.result.sessions, infos);
    }
}
