//! Decoding the query ring buffer's records.

use qprof_common::{
    queries::{DoneEvent, EVENT_DONE, EVENT_TEXT, EVENT_UNFOLLOWED, TEXT_MAX, TextEvent},
    query_tls::UnfollowedEvent,
};

/// One record from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryEvent {
    Text {
        db: u32,
        text_id: u64,
        bytes: Vec<u8>,
        truncated: bool,
    },
    Done(DoneEvent),
    /// A connection that cannot be followed (once per connection).
    Unfollowed(UnfollowedEvent),
}

/// Decodes a record; `None` for a record of unknown kind or short length
/// (counted by the caller as malformed).
#[must_use]
pub fn decode(record: &[u8]) -> Option<QueryEvent> {
    let kind = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_TEXT if record.len() >= size_of::<TextEvent>() => {
            // SAFETY: length checked; TextEvent is repr(C) plain data for
            // which every bit pattern is valid; read_unaligned copes with
            // the ring's 8-byte record alignment.
            let ev = unsafe { record.as_ptr().cast::<TextEvent>().read_unaligned() };
            let len = (ev.len as usize).min(TEXT_MAX);
            Some(QueryEvent::Text {
                db: ev.db,
                text_id: ev.text_id,
                bytes: ev.text[..len].to_vec(),
                truncated: ev.truncated != 0,
            })
        }
        EVENT_DONE if record.len() >= size_of::<DoneEvent>() => {
            // SAFETY: as above, for DoneEvent.
            Some(QueryEvent::Done(unsafe {
                record.as_ptr().cast::<DoneEvent>().read_unaligned()
            }))
        }
        EVENT_UNFOLLOWED if record.len() >= size_of::<UnfollowedEvent>() => {
            // SAFETY: as above, for UnfollowedEvent.
            Some(QueryEvent::Unfollowed(unsafe {
                record.as_ptr().cast::<UnfollowedEvent>().read_unaligned()
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct as bytes.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    /// Text and completion records round-trip; short and unknown ones are refused.
    #[test]
    fn decodes_records() {
        let mut text = TextEvent {
            kind: EVENT_TEXT,
            db: 1,
            text_id: 7,
            len: 5,
            truncated: 0,
            text: [0; TEXT_MAX],
        };
        text.text[..5].copy_from_slice(b"BEGIN");
        assert_eq!(
            decode(&bytes_of(&text)),
            Some(QueryEvent::Text {
                db: 1,
                text_id: 7,
                bytes: b"BEGIN".to_vec(),
                truncated: false
            })
        );
        let done = DoneEvent {
            kind: EVENT_DONE,
            db: 1,
            text_id: 7,
            pid: 3,
            tid: 4,
            latency_ns: 99,
            rows: 1,
            error: 0,
            pad: 0,
        };
        assert_eq!(decode(&bytes_of(&done)), Some(QueryEvent::Done(done)));
        assert_eq!(decode(&bytes_of(&done)[..20]), None);
        let lost = UnfollowedEvent {
            kind: EVENT_UNFOLLOWED,
            reason: 1,
            pid: 5,
            fd: 6,
        };
        assert_eq!(decode(&bytes_of(&lost)), Some(QueryEvent::Unfollowed(lost)));
        assert_eq!(decode(&bytes_of(&lost)[..12]), None);
        assert_eq!(decode(&[9, 0, 0, 0, 1, 2]), None);
        assert_eq!(decode(&[]), None);
        text.len = 60_000;
        assert!(
            matches!(decode(&bytes_of(&text)), Some(QueryEvent::Text { bytes, .. }) if bytes.len() == TEXT_MAX)
        );
    }
}
