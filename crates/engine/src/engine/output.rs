//! Bytes waiting to be sent on a connection: appended at the back, sent
//! from the front through a read cursor.
//!
//! Draining a `Vec` from the front moves everything behind what was sent,
//! which is quadratic in a large reply sent a socket buffer at a time.
//! Here a send only moves the cursor; the buffer is emptied when all of it
//! went out, and compacted (one move of what is left) only once the sent
//! part is at least half of it, so every byte is moved at most once more
//! on average.

/// Sent prefixes shorter than this are never compacted away early.
const COMPACT_MIN: usize = 64 << 10;

/// A buffer larger than this is given back to the allocator once empty, so
/// a connection that passed one large reply does not keep its room.
pub const KEEP_CAPACITY: usize = 256 << 10;
/// Output room an idle session keeps (a few small replies' worth).
pub const KEEP_IDLE: usize = 4 << 10;

/// Output of one connection.
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// Pending bytes the runtime has been shown ([`Output::show`]).
    shown: usize,
}

impl Output {
    /// What is waiting, oldest first.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// What is waiting, for the runtime to send: what it is shown now is
    /// no longer news.
    pub fn show(&mut self) -> &[u8] {
        self.shown = self.len();
        self.pending()
    }

    /// Whether output was added since the runtime last looked: only then
    /// is it worth asking the runtime to send (output it already saw and
    /// could not send goes out when the peer makes room).
    pub fn has_news(&self) -> bool {
        self.len() > self.shown
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where new output is appended (only appended: what is in it before
    /// the call is not to be changed).
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The first `n` pending bytes were sent.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        self.sent += n;
        self.shown = self.shown.saturating_sub(n);
        if self.sent == self.buf.len() {
            self.clear();
        } else if self.sent >= COMPACT_MIN && self.sent * 2 >= self.buf.len() {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Drops everything waiting; gives a large buffer's room back.
    pub fn clear(&mut self) {
        self.sent = 0;
        self.shown = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// Gives back its buffer's room when nothing waits and it holds more
    /// than `keep` bytes.
    pub fn shrink(&mut self, keep: usize) {
        if self.is_empty() && self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.sent = 0;
            self.shown = 0;
        }
    }

    /// Bytes held, sent or not (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_in_order_across_appends_and_partial_sends() {
        let mut out = Output::default();
        out.tail().extend_from_slice(b"hello ");
        out.consume(2);
        out.tail().extend_from_slice(b"world");
        assert_eq!(out.pending(), b"llo world");
        out.consume(4);
        assert_eq!(out.pending(), b"world");
        out.consume(100);
        assert!(out.is_empty());
        assert_eq!(out.buf.len(), 0, "emptied once all was sent");
    }

    #[test]
    fn a_large_reply_sent_in_small_pieces_moves_each_byte_a_bounded_number_of_times() {
        let total = 16 << 20;
        let mut out = Output::default();
        out.tail().resize(total, 7);
        let mut moved = 0;
        let mut left = total;
        while left > 0 {
            let before = out.sent;
            out.consume(8 << 10);
            if out.sent < before {
                // Compacted: what was left moved once.
                moved += out.buf.len();
            }
            left = out.len();
        }
        assert!(moved <= total, "moved {moved} bytes for {total}");
    }

    #[test]
    fn only_output_added_after_the_last_look_is_news() {
        let mut out = Output::default();
        assert!(!out.has_news());
        out.tail().extend_from_slice(b"abc");
        assert!(out.has_news());
        assert_eq!(out.show(), b"abc");
        assert!(!out.has_news(), "seen, even though not sent");
        out.consume(1);
        assert!(!out.has_news());
        out.tail().push(b'd');
        assert!(out.has_news());
    }

    #[test]
    fn a_large_buffer_is_given_back_once_empty() {
        let mut out = Output::default();
        out.tail().resize(1 << 20, 0);
        out.consume(1 << 20);
        assert_eq!(out.capacity(), 0);
        out.tail().resize(1000, 0);
        out.consume(1000);
        assert!(out.capacity() >= 1000, "a small one is kept");
    }
}
