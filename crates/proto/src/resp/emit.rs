//! RESP writers: the replies and requests the proxy makes itself. Each
//! appends to a caller's buffer and allocates nothing once it has grown.

use std::fmt;
use std::io::Write;

/// Appends `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A header line: `<kind><n>\r\n`.
fn write_header(out: &mut Vec<u8>, kind: u8, n: u64) {
    out.push(kind);
    write_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// `*<n>\r\n`: an array of `n` values follows.
pub fn write_array_header(out: &mut Vec<u8>, n: usize) {
    write_header(out, b'*', n as u64);
}

/// A map of `pairs` key-value pairs follows: RESP3's `%<pairs>`, or for
/// RESP2 the flat array `*<2 * pairs>` Redis answers with instead.
pub fn write_map_header(out: &mut Vec<u8>, pairs: usize, resp3: bool) {
    if resp3 {
        write_header(out, b'%', pairs as u64);
    } else {
        write_header(out, b'*', 2 * pairs as u64);
    }
}

/// A bulk string.
pub fn write_bulk(out: &mut Vec<u8>, data: &[u8]) {
    write_header(out, b'$', data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// An integer.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    write_decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// A null: RESP3's `_`, RESP2's null bulk string.
pub fn write_null(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// An error line, `-` and the message (which starts with its code, as
/// in `ERR unknown command`). The message must be a single line.
pub fn write_error(out: &mut Vec<u8>, message: fmt::Arguments<'_>) {
    out.push(b'-');
    // Writing to a Vec cannot fail.
    let _ = out.write_fmt(message);
    out.extend_from_slice(b"\r\n");
}

/// An array of bulk strings: a command as a client sends it, or a reply
/// such as `CONFIG GET`'s.
pub fn write_bulk_array<'a, I>(out: &mut Vec<u8>, items: I)
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    write_array_header(out, items.len());
    for item in items {
        write_bulk(out, item);
    }
}
