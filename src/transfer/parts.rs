//! Cuts a file's byte stream into upload parts, checking its length as it goes and showing
//! every byte to the content checks exactly once. Part buffers are reused from one part to the
//! next, so memory stays at `part_size * parts_in_flight` and no new buffer is paged in.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::TransferError;
use crate::integrity::{Beside, CorruptGzip, Inspection, Inspector};

/// Part buffers whose upload is done, kept for the next parts. An allocator hands back a freed
/// 8 MiB buffer to the process, not to the system, and from another thread's arena: without
/// reuse, peak RSS grew past the parts in flight (61 MiB where 40 were expected).
#[derive(Clone, Default)]
pub(super) struct PartBuffers {
    free: Arc<Mutex<Vec<BytesMut>>>,
    part_size: usize,
    /// At most this many are kept: one per part slot.
    keep: usize,
}

impl PartBuffers {
    pub(super) fn new(part_size: usize, keep: usize) -> Self {
        Self { free: Arc::default(), part_size, keep }
    }

    /// The pool, for parts of its size. Parts that had to grow get buffers of their own, none
    /// kept, so the pool holds the usual size only.
    pub(super) fn for_parts_of(&self, part_size: usize) -> Self {
        match part_size == self.part_size {
            true => self.clone(),
            false => Self::new(part_size, 0),
        }
    }

    /// An empty buffer for one part.
    fn take(&self) -> BytesMut {
        let reused = self.free.lock().expect("never poisoned").pop();
        reused
            .filter(|b| b.capacity() >= self.part_size)
            .unwrap_or_else(|| BytesMut::with_capacity(self.part_size))
    }

    /// Keeps an uploaded part's buffer, if nothing else holds it any more and it is of the
    /// pool's size (a part that had to grow is let go).
    pub(super) fn give_back(&self, part: Bytes) {
        if let Ok(mut buffer) = part
            .try_into_mut()
            .map_err(drop)
            .and_then(|b| if b.capacity() < 2 * self.part_size { Ok(b) } else { Err(()) })
        {
            buffer.clear();
            let mut free = self.free.lock().expect("never poisoned");
            if free.len() < self.keep {
                free.push(buffer);
            }
        }
    }
}

/// Parts of `part_size` from a stream of chunks. An over-long body is stopped at the first
/// extra byte; a short one is caught when the stream ends.
pub(super) struct PartReader<S> {
    stream: S,
    carry: Bytes,
    pub(super) received: u64,
    pub(super) expected: u64,
    part_size: usize,
    ended: bool,
    inspector: Option<Beside>,
    buffers: PartBuffers,
}

impl<S: Stream<Item = Result<Bytes, TransferError>> + Unpin> PartReader<S> {
    pub(super) fn new(stream: S, expected: u64, buffers: PartBuffers, inspector: Inspector) -> Self {
        Self {
            stream,
            carry: Bytes::new(),
            received: 0,
            expected,
            part_size: buffers.part_size,
            ended: false,
            inspector: Some(Beside::spawn(inspector)),
            buffers,
        }
    }

    pub(super) fn part_size(&self) -> usize {
        self.part_size
    }

    /// True once the stream has ended and every byte has been handed out.
    pub(super) fn finished(&self) -> bool {
        self.ended && self.carry.is_empty()
    }

    /// The checks' findings, once the stream has ended (or the inspector has stopped).
    pub(super) async fn inspection(&mut self) -> Result<Inspection, TransferError> {
        let inspector = self.inspector.take().expect("inspected once");
        inspector.finish().await.map_err(TransferError::from)
    }

    /// The next part: `part_size` bytes, or fewer for the last one.
    pub(super) async fn next_part(&mut self) -> Result<Bytes, TransferError> {
        let mut part = self.buffers.take();
        loop {
            let room = self.part_size - part.len();
            if !self.carry.is_empty() {
                let take = room.min(self.carry.len());
                part.extend_from_slice(&self.carry.split_to(take));
            }
            if part.len() == self.part_size {
                // Peek so that a body ending exactly on a part boundary is seen as finished.
                if self.carry.is_empty() && !self.ended {
                    self.pull().await?;
                }
                return Ok(part.freeze());
            }
            if self.ended {
                return Ok(part.freeze());
            }
            self.pull().await?;
        }
    }

    async fn pull(&mut self) -> Result<(), TransferError> {
        match self.stream.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                self.received += chunk.len() as u64;
                if self.received > self.expected {
                    return Err(self.mismatch());
                }
                let inspector = self.inspector.as_mut().expect("inspected at the end only");
                if inspector.update(chunk.clone()).await.is_err() {
                    return Err(self.inspection().await.err().unwrap_or(TransferError::Corrupt(
                        CorruptGzip("the inspection stopped early".into()),
                    )));
                }
                self.carry = chunk;
            }
            None if self.received == self.expected => self.ended = true,
            None => return Err(self.mismatch()),
        }
        Ok(())
    }

    fn mismatch(&self) -> TransferError {
        TransferError::SizeMismatch { expected: self.expected, got: self.received }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, TransferError>> + Unpin {
        let mut next = 0u8;
        let items: Vec<_> = sizes
            .iter()
            .map(|n| {
                let chunk: Vec<u8> = (0..*n)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                Ok(Bytes::from(chunk))
            })
            .collect();
        stream::iter(items)
    }

    async fn parts(sizes: &[usize], expected: u64, part_size: usize) -> Result<Vec<usize>, TransferError> {
        let inspector = Inspector::for_file("x", Default::default());
        let buffers = PartBuffers::new(part_size, 1);
        let mut reader = PartReader::new(chunks(sizes), expected, buffers.clone(), inspector);
        let mut out = vec![];
        loop {
            let part = reader.next_part().await?;
            out.push(part.len());
            buffers.give_back(part);
            if reader.finished() {
                return Ok(out);
            }
        }
    }

    #[tokio::test]
    async fn parts_are_full_except_the_last() {
        assert_eq!(parts(&[3, 7, 2, 9], 21, 5).await.unwrap(), vec![5, 5, 5, 5, 1]);
        assert_eq!(parts(&[10], 10, 5).await.unwrap(), vec![5, 5]);
        assert_eq!(parts(&[4], 4, 5).await.unwrap(), vec![4]);
        assert_eq!(parts(&[], 0, 5).await.unwrap(), vec![0]);
        // An empty chunk (an HTTP/2 data frame may be one) right after a full part ends nothing.
        assert_eq!(parts(&[5, 0, 5], 10, 5).await.unwrap(), vec![5, 5]);
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_length_is_refused() {
        assert!(matches!(
            parts(&[5, 5], 9, 5).await,
            Err(TransferError::SizeMismatch { expected: 9, got: 10 })
        ));
        assert!(matches!(
            parts(&[5, 3], 9, 5).await,
            Err(TransferError::SizeMismatch { expected: 9, got: 8 })
        ));
    }

    /// An uploaded part of `capacity` bytes, handed back to `pool`.
    fn give_back(pool: &PartBuffers, capacity: usize) -> *const u8 {
        let mut part = BytesMut::with_capacity(capacity);
        part.resize(capacity, 7);
        let at = part.as_ptr();
        pool.give_back(part.freeze());
        at
    }

    fn kept(pool: &PartBuffers) -> usize {
        pool.free.lock().unwrap().len()
    }

    #[test]
    fn a_part_buffer_is_used_again_and_the_pool_keeps_one_per_slot() {
        let pool = PartBuffers::new(1024, 1);
        let at = give_back(&pool, 1024);
        let again = pool.take();
        assert_eq!(
            (again.as_ptr(), again.len(), again.capacity()),
            (at, 0, 1024),
            "the same memory, emptied"
        );
        assert!(pool.take().capacity() >= 1024, "a new one when none is free");

        give_back(&pool, 1024);
        give_back(&pool, 1024);
        assert_eq!(kept(&pool), 1, "no more than the pool's slots");
    }

    #[test]
    fn a_part_that_grew_or_is_still_shared_is_let_go() {
        let pool = PartBuffers::new(1024, 4);
        give_back(&pool, 1500);
        assert_eq!(kept(&pool), 1, "a little over the part size, as an allocator rounds, is kept");
        give_back(&pool, 2048);
        assert_eq!(kept(&pool), 1, "a part that had to grow is let go");
        let shared = Bytes::from(vec![7; 1024]);
        pool.give_back(shared.clone());
        assert_eq!(kept(&pool), 1, "still held by another owner");
        let small = PartBuffers::new(1024, 1);
        give_back(&small, 512);
        assert!(small.take().capacity() >= 1024, "a buffer smaller than a part is not handed out");
    }

    #[test]
    fn parts_that_grew_get_buffers_of_their_own() {
        let pool = PartBuffers::new(1024, 4);
        assert!(Arc::ptr_eq(&pool.for_parts_of(1024).free, &pool.free), "the usual size uses the pool");
        let own = pool.for_parts_of(4096);
        assert!(!Arc::ptr_eq(&own.free, &pool.free));
        assert_eq!((own.part_size, own.keep), (4096, 0), "none kept");
    }
}
