//! Each thread's cache of the BPE counts of short pre-tokenized pieces (`" the"`, `"You"`,
//! `" helpful"`): prompts repeat the same few thousand words, and counting one with the byte-pair
//! encoder costs ~350 instructions where finding it here costs a hash and a compare. A count is a
//! pure function of the piece, so a cached one is exact.
//!
//! Written by hand rather than with a cache crate: those allocate a key per entry and evict by
//! recency, where this needs neither. It is direct-mapped: 1,024 slots of 24 bytes (24 KiB per
//! thread that counts, allocated on its first count), each holding one piece of up to 22 bytes;
//! a piece that lands on a taken slot replaces what was there.

use std::cell::RefCell;

const SLOTS: usize = 1024;
/// Longer pieces are counted each time (they are rarer, and their count costs more than a
/// miss here anyway).
pub const MAX_PIECE: usize = 22;

#[derive(Clone, Copy)]
struct Slot {
    /// 0: empty (pieces are never empty).
    len: u8,
    count: u8,
    bytes: [u8; MAX_PIECE],
}

const EMPTY: Slot = Slot { len: 0, count: 0, bytes: [0; MAX_PIECE] };

thread_local! {
    static CACHE: RefCell<Option<Box<[Slot; SLOTS]>>> = const { RefCell::new(None) };
}

/// The slot of a piece: its bytes folded eight at a time (FxHash's multiply), the top ten bits.
fn slot_of(piece: &[u8]) -> usize {
    let mut hash = piece.len() as u64;
    for chunk in piece.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (hash >> (64 - SLOTS.trailing_zeros())) as usize
}

impl Slot {
    fn holds(&self, piece: &[u8]) -> bool {
        usize::from(self.len) == piece.len() && &self.bytes[..piece.len()] == piece
    }
}

/// Runs `f` on this thread's slots (made on first use); `None` when the thread is ending.
fn with_slots<R>(f: impl FnOnce(&mut [Slot; SLOTS]) -> R) -> Option<R> {
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            Some(f(cache.get_or_insert_with(|| Box::new([EMPTY; SLOTS]))))
        })
        .ok()
        .flatten()
}

/// The count of `piece`: from the cache, or from `count` (then cached).
pub fn count(piece: &[u8], count: impl FnOnce(&[u8]) -> usize) -> usize {
    if piece.is_empty() || piece.len() > MAX_PIECE {
        return count(piece);
    }
    let index = slot_of(piece);
    let hit = with_slots(|slots| {
        let slot = &slots[index];
        slot.holds(piece).then_some(usize::from(slot.count))
    });
    if let Some(counted) = hit.flatten() {
        return counted;
    }
    let counted = count(piece);
    // A piece of at most 22 bytes has at most 22 tokens: it always fits.
    if let Ok(small) = u8::try_from(counted) {
        with_slots(|slots| {
            let slot = &mut slots[index];
            slot.len = piece.len() as u8;
            slot.count = small;
            slot.bytes[..piece.len()].copy_from_slice(piece);
        });
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(piece: &[u8]) -> usize {
        piece.len() % 7 + 1
    }

    #[test]
    fn a_cached_count_is_the_counters_and_is_not_counted_again() {
        let mut calls = 0;
        assert_eq!(
            count(b" hello", |p| {
                calls += 1;
                fake(p)
            }),
            fake(b" hello")
        );
        assert_eq!(count(b" hello", |_| unreachable!("counted again")), fake(b" hello"));
        assert_eq!(calls, 1);
    }

    #[test]
    fn pieces_sharing_a_slot_each_get_their_own_count() {
        let first = b"aa".to_vec();
        let other = (0u32..)
            .map(|i| format!("p{i}").into_bytes())
            .find(|p| slot_of(p) == slot_of(&first) && p != &first)
            .expect("some piece shares the slot");
        assert_eq!(count(&first, |_| 3), 3);
        assert_eq!(count(&other, |_| 9), 9, "a different piece in the slot is counted, not served the first's count");
        let mut recounted = false;
        assert_eq!(
            count(&first, |_| {
                recounted = true;
                3
            }),
            3
        );
        assert!(recounted, "the other replaced the first, which is counted again");
        assert_eq!(count(&first, |_| unreachable!("cached again")), 3);
    }

    #[test]
    fn long_and_empty_pieces_are_always_counted() {
        let long = [b'x'; MAX_PIECE + 1];
        assert_eq!(count(&long, |_| 4), 4);
        assert_eq!(count(&long, |_| 5), 5);
        assert_eq!(count(b"", |_| 0), 0);
    }
}
