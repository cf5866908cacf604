//! Writers of the replies the proxy makes itself. They append to a reused
//! buffer and allocate nothing once it has grown.

use std::io::Write;

/// Appends `n` in decimal.
pub fn decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
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

/// A RESP header line: `<kind><n>\r\n`.
pub fn header(out: &mut Vec<u8>, kind: u8, n: u64) {
    out.push(kind);
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    header(out, b'$', data.len() as u64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    if n < 0 {
        out.push(b'-');
    }
    decimal(out, n.unsigned_abs());
    out.extend_from_slice(b"\r\n");
}

/// `-ERR ferrox: <message>` where the message names a client-visible
/// token (a command or key), shown lossily and cut at 64 characters.
pub fn error_about(out: &mut Vec<u8>, before: &str, token: &[u8], after: &[&str]) {
    out.extend_from_slice(b"-ERR ferrox: ");
    out.extend_from_slice(before.as_bytes());
    let shown = &token[..token.len().min(64)];
    for &b in shown {
        // Keep the error a single printable line.
        out.push(if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'?'
        });
    }
    for part in after {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole error line from a formatted message.
pub fn error_fmt(out: &mut Vec<u8>, prefix: &str, args: std::fmt::Arguments<'_>) {
    out.extend_from_slice(prefix.as_bytes());
    // Writing to a Vec cannot fail.
    let _ = out.write_fmt(args);
    out.extend_from_slice(b"\r\n");
}

/// A RESP2/RESP3 null.
pub fn null(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// An empty map (RESP3) or array (RESP2).
pub fn empty_map(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"%0\r\n" } else { b"*0\r\n" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers() {
        let mut out = Vec::new();
        decimal(&mut out, 0);
        header(&mut out, b'*', 12);
        bulk(&mut out, b"ab");
        integer(&mut out, -7);
        error_about(&mut out, "unknown command '", b"x\r\ny", &["'"]);
        assert_eq!(
            out,
            b"0*12\r\n$2\r\nab\r\n:-7\r\n-ERR ferrox: unknown command 'x??y'\r\n"
        );
    }
}
