//! Memory for one frame's payload as the blocking client reads it.
//!
//! A large answer (a listing of 10,000 sessions is 3.2 MB) is read into fresh memory, and the
//! kernel hands that memory over one 4 KiB page at a time, each on its own page fault: 780 of
//! them for such a listing, 1.5 ms on the VM the benchmarks run on, a fifth of the whole
//! command. On Linux an answer of at least [`HUGE`] bytes is therefore read into an anonymous
//! mapping aligned to 2 MiB and marked for transparent huge pages, which the kernel fills a
//! 2 MiB page per fault (0.16 ms for the same 3.2 MB). Where huge pages are off the mapping is
//! ordinary pages and costs what the heap would. Under the kernel's default `defrag` setting,
//! a fault in memory advised so first compacts memory when no 2 MiB page is free, which on a
//! badly fragmented machine can cost more than it saves, before falling back to small pages.
//!
//! Smaller answers, and every answer elsewhere, grow a heap buffer as bytes arrive. The
//! mapping is made at the length the header claims, but only the pages the payload fills are
//! ever backed by memory, so a corrupted length costs address space (and commit charge where
//! the kernel refuses to overcommit); if the mapping cannot be made at all, the heap path is
//! taken.

use std::io::Read;
use std::ops::Deref;

use sessiond_proto::frame::{self, FrameError};

/// The smallest payload read into a huge-page mapping: one huge page. Below it there is no
/// whole huge page to gain.
#[cfg(any(target_os = "linux", test))]
const HUGE: usize = 2 * 1024 * 1024;

/// One frame's payload.
#[derive(Debug)]
pub(crate) struct Payload(Memory);

#[derive(Debug)]
enum Memory {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Mapped {
        map: memmap2::MmapMut,
        start: usize,
        len: usize,
    },
}

impl Payload {
    /// Reads the `len` payload bytes that follow a frame header.
    pub(crate) fn read(reader: &mut impl Read, len: usize) -> Result<Self, FrameError> {
        #[cfg(target_os = "linux")]
        if len >= HUGE {
            if let Some((mut map, start)) = huge_mapping(len) {
                frame::read_payload_into(reader, &mut map[start..start + len])?;
                return Ok(Self(Memory::Mapped { map, start, len }));
            }
        }
        frame::read_payload(reader, len).map(|bytes| Self(Memory::Heap(bytes)))
    }

    /// The bytes as a vector (a copy when they were read into a mapping).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Memory::Heap(bytes) => bytes,
            #[cfg(target_os = "linux")]
            Memory::Mapped { .. } => self.to_vec(),
        }
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Memory::Heap(bytes) => bytes,
            #[cfg(target_os = "linux")]
            Memory::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl Clone for Payload {
    fn clone(&self) -> Self {
        Self(Memory::Heap(self.to_vec()))
    }
}

/// An anonymous mapping with room for `len` bytes from a 2 MiB boundary, marked for huge
/// pages, and where that boundary lies in it; `None` if it cannot be made.
#[cfg(target_os = "linux")]
fn huge_mapping(len: usize) -> Option<(memmap2::MmapMut, usize)> {
    // Whole huge pages from the boundary on, plus one to find the boundary in: the part
    // before it is never touched, so never backed.
    let span = len.checked_next_multiple_of(HUGE)?;
    let map = memmap2::MmapOptions::new()
        .len(span.checked_add(HUGE)?)
        .map_anon()
        .ok()?;
    let addr = map.as_ptr() as usize;
    let start = addr.next_multiple_of(HUGE) - addr;
    // Advice only: where the kernel has no transparent huge pages the mapping still serves,
    // in small pages.
    let _ = map.advise_range(memmap2::Advice::HugePage, start, span);
    Some((map, start))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn small_and_large_payloads_read_back_exactly() {
        for len in [0, 1, 4096, HUGE - 1, HUGE, HUGE + 1, 3 * HUGE + 12_345] {
            let sent = bytes(len);
            let payload = Payload::read(&mut Cursor::new(&sent), len).unwrap();
            assert_eq!(payload.len(), len);
            assert!(*payload == *sent, "payload of {len} bytes differs");
            assert!(*payload.clone() == *sent, "a copy of {len} bytes differs");
            assert!(payload.into_vec() == sent, "{len} bytes as a vector differ");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_payload_is_mapped_from_a_huge_page_boundary_and_a_small_one_is_not() {
        let len = HUGE + 100;
        let payload = Payload::read(&mut Cursor::new(bytes(len)), len).unwrap();
        assert!(
            matches!(payload.0, Memory::Mapped { .. }),
            "{len} bytes not mapped"
        );
        assert_eq!(payload.as_ptr() as usize % HUGE, 0);
        let len = HUGE - 1;
        let payload = Payload::read(&mut Cursor::new(bytes(len)), len).unwrap();
        assert!(matches!(payload.0, Memory::Heap(_)), "{len} bytes mapped");
    }

    #[test]
    fn a_payload_cut_short_says_how_far_it_got() {
        for len in [10, HUGE + 10] {
            let sent = bytes(len - 4);
            match Payload::read(&mut Cursor::new(&sent), len) {
                Err(FrameError::Truncated { got, want }) => {
                    assert_eq!((got, want), (len - 4, len));
                }
                other => panic!("expected Truncated, got {other:?}"),
            }
        }
    }
}
