//! Byte buffers between sockets and the HTTP code: a growable read buffer with a hard ceiling, and a
//! write batcher that coalesces small writes (a response head and a small body) into one syscall.

use std::io::{self, Read, Write};

/// Bytes read from a socket but not yet consumed, kept in one allocation that grows on demand up to a
/// ceiling chosen per call (the head limit while reading a head, the I/O buffer size while streaming).
#[derive(Debug, Default)]
pub struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// An empty buffer that allocates nothing until the first read.
    pub fn new() -> Self {
        ReadBuf::default()
    }

    /// The unconsumed bytes.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes of allocation the buffer reads into.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Makes an empty buffer's allocation at least `size` bytes (zero-filled once; a spare that has
    /// it keeps it).
    pub fn ensure_size(&mut self, size: usize) {
        if self.is_empty() && self.data.len() < size {
            (self.start, self.end) = (0, 0);
            self.data.resize(size, 0);
        }
    }

    /// Bytes the next read can add without moving what is held or growing the allocation.
    pub fn room(&self) -> usize {
        self.data.len() - self.end
    }

    /// Marks the first `n` unconsumed bytes as used.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Forgets every unconsumed byte.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Gives the allocation back while the buffer is empty: an idle parked connection then costs no
    /// buffer at all.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
        }
    }

    /// Reads once from `src` into the buffer, keeping at most `max` unconsumed bytes; `step` is how
    /// much room to allocate when the buffer is empty. Returns the number of bytes read (0 means
    /// end of stream). Call only when `len() < max`.
    pub fn fill_from<R: Read + ?Sized>(&mut self, src: &mut R, step: usize, max: usize) -> io::Result<usize> {
        debug_assert!(self.len() < max);
        if self.start == self.end && self.data.len() < step.min(max) {
            // Empty but smaller than a step (a spare lent from a shorter read): one step's room,
            // so a large body is still read a whole step at a time.
            (self.start, self.end) = (0, 0);
            self.data.resize(step.min(max), 0);
        }
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.data.len() {
                let grown = (self.data.len() * 2).max(step).min(max.max(1));
                self.data.resize(grown.max(self.end + 1), 0);
            }
        }
        let room = (max - self.len()).min(self.data.len() - self.end);
        let n = src.read(&mut self.data[self.end..self.end + room])?;
        self.end += n;
        Ok(n)
    }
}

/// Read buffers given back empty, kept by one event loop for its next reads: a request then reuses
/// an allocation whose bytes are already initialised instead of allocating and zeroing a fresh
/// one, while an idle connection still holds no buffer. Bounded in count and in size.
#[derive(Debug, Default)]
pub struct SpareBuffers {
    bufs: Vec<Vec<u8>>,
}

impl SpareBuffers {
    /// Buffers kept at most.
    const KEEP: usize = 32;
    /// Larger buffers (grown for a large body) are freed, not kept: a 64 KiB backend read window
    /// and room for the response head in front of its body.
    pub const LARGEST: usize = 80 * 1024;

    /// Gives `buf` a kept allocation if it has none: the smallest of at least `step` bytes (what
    /// its next read asks for), else the largest. A smaller one would be grown, reallocated and
    /// zero-filled on the read, which is what keeping it was meant to spare (an 8 KiB client
    /// buffer lent for a 16 KiB backend read was, on every request); the larger ones stay for the
    /// reads that need them.
    pub fn lend(&mut self, buf: &mut ReadBuf, step: usize) {
        if !buf.data.is_empty() {
            return;
        }
        let sizes = self.bufs.iter().map(Vec::len).enumerate();
        let fits = sizes.clone().filter(|&(_, len)| len >= step).min_by_key(|&(_, len)| len);
        let Some((pick, _)) = fits.or_else(|| sizes.max_by_key(|&(_, len)| len)) else { return };
        let data = self.bufs.swap_remove(pick);
        *buf = ReadBuf { data, start: 0, end: 0 };
    }

    /// Takes `buf`'s allocation back while `buf` is empty (freeing it when enough are kept).
    pub fn keep(&mut self, buf: &mut ReadBuf) {
        if !buf.is_empty() || buf.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut buf.data);
        *buf = ReadBuf::default();
        if self.bufs.len() < Self::KEEP && data.len() <= Self::LARGEST {
            self.bufs.push(data);
        }
    }
}

/// Coalesces writes to `dst` in a caller-owned vector so a worker reuses one allocation for every
/// request; data larger than the batch goes straight to the socket.
pub struct WriteBatch<'a, W: Write> {
    out: &'a mut Vec<u8>,
    dst: &'a mut W,
    batch: usize,
}

impl<'a, W: Write> WriteBatch<'a, W> {
    pub fn new(out: &'a mut Vec<u8>, dst: &'a mut W, batch: usize) -> Self {
        out.clear();
        WriteBatch { out, dst, batch }
    }

    /// Queues `data`, sending the batch first when it would overflow.
    pub fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if self.out.len() + data.len() <= self.batch {
            self.out.extend_from_slice(data);
            return Ok(());
        }
        self.send()?;
        if data.len() >= self.batch {
            self.dst.write_all(data)
        } else {
            self.out.extend_from_slice(data);
            Ok(())
        }
    }

    /// Sends what is batched.
    pub fn send(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.dst.write_all(self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for WriteBatch<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.put(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()?;
        self.dst.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_buffers_are_lent_whole_kept_only_empty_and_bounded() {
        let mut spare = SpareBuffers::default();
        let mut buf = ReadBuf::new();
        let mut src: &[u8] = b"0123456789";
        buf.fill_from(&mut src, 4, 64).unwrap();
        spare.keep(&mut buf);
        assert_eq!(spare.bufs.len(), 0, "a buffer with unread bytes stays with its owner");
        buf.consume(buf.len());
        spare.keep(&mut buf);
        assert_eq!((spare.bufs.len(), buf.data.len()), (1, 0), "an empty one is taken, its owner holds nothing");

        // Lent to a read whose step is larger: it grows to one step, so large reads stay large.
        let mut other = ReadBuf::new();
        spare.lend(&mut other, 32);
        assert_eq!((spare.bufs.len(), other.data.len()), (0, 4));
        let mut src: &[u8] = &[7u8; 100];
        assert_eq!(other.fill_from(&mut src, 32, 1024).unwrap(), 32);

        // A buffer grown past the largest kept size is freed, and no more than KEEP are kept.
        let mut big = ReadBuf { data: vec![0; SpareBuffers::LARGEST + 1], start: 0, end: 0 };
        spare.keep(&mut big);
        assert!(spare.bufs.is_empty());
        for _ in 0..SpareBuffers::KEEP + 3 {
            let mut small = ReadBuf { data: vec![0; 16], start: 0, end: 0 };
            spare.keep(&mut small);
        }
        assert_eq!(spare.bufs.len(), SpareBuffers::KEEP);
    }

    #[test]
    fn a_read_is_lent_a_buffer_as_large_as_its_step_when_one_is_kept() {
        let mut spare = SpareBuffers::default();
        for size in [8, 64, 16, 32] {
            spare.keep(&mut ReadBuf { data: vec![0; size], start: 0, end: 0 });
        }
        let lent = |spare: &mut SpareBuffers, step| {
            let mut buf = ReadBuf::new();
            spare.lend(&mut buf, step);
            buf.data.len()
        };
        // The smallest that fits, so the larger ones stay for the reads that need them.
        assert_eq!(lent(&mut spare, 16), 16);
        assert_eq!(lent(&mut spare, 16), 32);
        // None fits: the largest, grown by the read as before.
        assert_eq!(lent(&mut spare, 100), 64);
        assert_eq!(lent(&mut spare, 1), 8);
        assert_eq!(lent(&mut spare, 1), 0, "none left: the read allocates its own");
        // A buffer that has one keeps it.
        spare.keep(&mut ReadBuf { data: vec![0; 64], start: 0, end: 0 });
        let mut own = ReadBuf { data: vec![0; 4], start: 0, end: 0 };
        spare.lend(&mut own, 64);
        assert_eq!((own.data.len(), spare.bufs.len()), (4, 1));
    }

    #[test]
    fn fill_grows_to_ceiling_and_compacts() {
        let mut buf = ReadBuf::new();
        let mut src: &[u8] = b"hello world, this is more than eight bytes";
        assert_eq!(buf.fill_from(&mut src, 8, 16).unwrap(), 8);
        assert_eq!(buf.filled(), b"hello wo");
        buf.consume(6);
        // Compaction makes room before growth is considered.
        assert_eq!(buf.fill_from(&mut src, 8, 16).unwrap(), 6);
        assert_eq!(buf.filled(), b"world, t");
        assert_eq!(buf.fill_from(&mut src, 8, 16).unwrap(), 8);
        assert_eq!(buf.filled(), b"world, this is m");
        buf.consume(16);
        assert!(buf.is_empty());
        buf.release();
        assert_eq!(buf.data.capacity(), 0);
    }

    #[test]
    fn batch_coalesces_small_and_passes_large() {
        let mut out = Vec::new();
        let mut sink = Vec::new();
        {
            let mut w = WriteBatch::new(&mut out, &mut sink, 8);
            w.put(b"abc").unwrap();
            w.put(b"def").unwrap();
            w.put(b"0123456789").unwrap();
            w.put(b"x").unwrap();
            w.send().unwrap();
        }
        assert_eq!(sink, b"abcdef0123456789x");
    }
}
