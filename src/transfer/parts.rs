//! Cuts a file's byte stream into upload parts, checking its length as it goes and showing
//! every byte to the content checks exactly once.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::TransferError;
use crate::integrity::{Beside, CorruptGzip, Inspection, Inspector};

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
}

impl<S: Stream<Item = Result<Bytes, TransferError>> + Unpin> PartReader<S> {
    pub(super) fn new(stream: S, expected: u64, part_size: usize, inspector: Inspector) -> Self {
        Self {
            stream,
            carry: Bytes::new(),
            received: 0,
            expected,
            part_size,
            ended: false,
            inspector: Some(Beside::spawn(inspector)),
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
        let mut part = BytesMut::with_capacity(self.part_size);
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
        let mut reader = PartReader::new(chunks(sizes), expected, part_size, inspector);
        let mut out = vec![];
        loop {
            out.push(reader.next_part().await?.len());
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
}
