//! Transparent compression through the engine: values stored compressed
//! behind the frame header, replies decompressed, plain values untouched,
//! commands that would see stored bytes refused, corrupt values answered
//! with an error.

use super::*;
use crate::compress;

fn pool_counters(net: &Net) -> PoolCounters {
    net.engine.pools().next().unwrap().counters.clone()
}

fn compressing(protocol: Protocol, keys: &[&str]) -> PoolSpec {
    PoolSpec {
        protocol,
        compression: Some(ferrox_config::Compression {
            min_size: 64,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        }),
        ..spec(2)
    }
}

/// A value lz4 halves at least.
fn json(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s += r#"{"id":12345,"name":"ferrox","tags":["a","b"]},"#;
    }
    s.truncate(len);
    s
}

fn bulk(value: &str) -> Vec<u8> {
    format!("${}\r\n{value}\r\n", value.len()).into_bytes()
}

#[test]
fn redis_values_are_stored_compressed_and_read_back_whole() {
    let (mut net, c) = with_client(compressing(Protocol::Redis, &[]));
    let big = json(4000);
    net.send(c, &cmd(&["SET", "a", &big]));
    net.send(c, &cmd(&["SET", "b", "short"]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
    let stored = &net.servers[1].data[&b"a".to_vec()];
    assert!(compress::is_frame(stored), "stored as a frame");
    assert!(stored.len() < big.len() / 2, "{} bytes", stored.len());
    assert_eq!(&stored[..4], b"\xF7FXZ", "the documented magic");
    assert_eq!(
        net.servers[0].data[&b"b".to_vec()],
        b"short",
        "small: as it is"
    );

    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), bulk(&big));
    net.send(c, &cmd(&["GET", "b"]));
    assert_eq!(net.take(c), bulk("short"));
    // MGET split over both servers: each piece decompressed, then merged.
    net.send(c, &cmd(&["MGET", "a", "b", "nope"]));
    let mut expected = b"*3\r\n".to_vec();
    expected.extend(bulk(&big));
    expected.extend(bulk("short"));
    expected.extend(b"$-1\r\n");
    assert_eq!(net.take(c), expected);
    // MSET split: each value compressed on its own server.
    net.send(c, &cmd(&["MSET", "a2", &big, "b2", &big]));
    assert_eq!(net.take(c), b"+OK\r\n");
    assert!(compress::is_frame(&net.servers[1].data[&b"a2".to_vec()]));
    assert!(compress::is_frame(&net.servers[0].data[&b"b2".to_vec()]));
    net.send(c, &cmd(&["MGET", "b2"]));
    assert_eq!(net.take(c), [&b"*1\r\n"[..], &bulk(&big)].concat());

    let counters = pool_counters(&net);
    assert_eq!(counters.compressed_values, 3);
    assert_eq!(counters.compressed_bytes_in, 3 * 4000);
    assert!(counters.compressed_bytes_out < 3 * 2000);
    assert_eq!(counters.decompressed_values, 3);
    assert_eq!(counters.corrupt_values, 0);
}

#[test]
fn values_written_around_the_proxy_pass_untouched_and_corrupt_ones_are_errors() {
    let (mut net, c) = with_client(compressing(Protocol::Redis, &[]));
    let big = json(2000);
    net.send(c, &cmd(&["SET", "a", &big]));
    net.take(c);
    // Written straight to the server: no header, passed as it is.
    let x = (b'x' % 2) as usize;
    net.servers[x]
        .data
        .insert(b"x".to_vec(), b"plain bytes".to_vec());
    net.send(c, &cmd(&["GET", "x"]));
    assert_eq!(net.take(c), bulk("plain bytes"));
    // A frame whose payload was damaged: an error for that key only.
    let stored = net.servers[1].data.get_mut(b"a".as_slice()).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 0x55;
    net.send(c, &cmd(&["MGET", "a", "x"]));
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert!(
        reply.starts_with("*2\r\n-ERR ferrox: the stored value is unreadable: "),
        "{reply}"
    );
    assert!(reply.ends_with("$11\r\nplain bytes\r\n"), "{reply}");
    // Truncated: the same.
    net.servers[1]
        .data
        .get_mut(b"a".as_slice())
        .unwrap()
        .truncate(30);
    net.send(c, &cmd(&["GET", "a"]));
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert!(
        reply.starts_with("-ERR ferrox: the stored value is unreadable"),
        "{reply}"
    );
    assert_eq!(pool_counters(&net).corrupt_values, 2);
    // The session goes on.
    net.send(c, &cmd(&["GET", "x"]));
    assert_eq!(net.take(c), bulk("plain bytes"));
}

#[test]
fn a_small_value_that_looks_like_a_frame_reads_back_exactly() {
    let (mut net, c) = with_client(compressing(Protocol::Redis, &[]));
    // A real frame, written by a client as its own value, small enough
    // not to be compressed: it is wrapped, so it reads back as written.
    let mut codec = compress::Codec::new(compress::Algorithm::Lz4, 1, 0);
    let mut frame = Vec::new();
    codec.encode(json(400).as_bytes(), &mut frame);
    assert!(compress::is_frame(&frame));
    let mut request = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n".to_vec();
    resp::write_bulk(&mut request, &frame);
    net.send(c, &request);
    net.take(c);
    let mut get = Vec::new();
    resp::write_bulk(&mut get, &frame);
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), get);
}

#[test]
fn only_covered_keys_are_compressed_and_byte_commands_refused_on_them() {
    let (mut net, c) = with_client(compressing(Protocol::Redis, &["doc:*"]));
    let big = json(1000);
    net.send(c, &cmd(&["SET", "doc:1", &big]));
    net.send(c, &cmd(&["SET", "log:1", &big]));
    assert_eq!(net.take(c), b"+OK\r\n+OK\r\n");
    let stored = |net: &Net, key: &str| {
        let server = (key.as_bytes()[0] % 2) as usize;
        net.servers[server].data[key.as_bytes()].clone()
    };
    assert!(compress::is_frame(&stored(&net, "doc:1")));
    assert_eq!(stored(&net, "log:1"), big.as_bytes());
    for request in [
        cmd(&["APPEND", "doc:1", "x"]),
        cmd(&["STRLEN", "doc:1"]),
        cmd(&["GETRANGE", "doc:1", "0", "3"]),
        cmd(&["SETRANGE", "doc:1", "0", "x"]),
    ] {
        net.send(c, &request);
        let reply = String::from_utf8(net.take(c)).unwrap();
        assert!(
            reply.starts_with("-ERR ferrox: ") && reply.contains("compressed"),
            "{reply}"
        );
    }
    // Uncovered keys keep every command.
    net.send(c, &cmd(&["APPEND", "log:1", "x"]));
    assert!(!String::from_utf8(net.take(c))
        .unwrap()
        .contains("compressed"));
    assert_eq!(
        net.servers[(b'l' % 2) as usize].log.last().unwrap(),
        "APPEND"
    );
    // Inside MULTI a read of a covered key is refused, and EXEC then
    // discards the transaction.
    net.send(c, &cmd(&["MULTI"]));
    net.send(c, &cmd(&["GET", "doc:1"]));
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert!(reply.contains("inside MULTI"), "{reply}");
}

#[test]
fn memcached_values_carry_the_flag_bit_and_the_clients_flags_come_back() {
    let (mut net, c) = with_client(compressing(Protocol::Memcache, &[]));
    let big = json(3000);
    net.send(
        c,
        format!("set a 42 0 {}\r\n{big}\r\n", big.len()).as_bytes(),
    );
    net.send(c, b"set b 7 0 5\r\nsmall\r\n");
    assert_eq!(net.take(c), b"STORED\r\nSTORED\r\n");
    let bit = 1u32 << 29;
    assert_eq!(net.servers[1].flags[&b"a".to_vec()], 42 | bit);
    assert!(compress::is_frame(&net.servers[1].data[&b"a".to_vec()]));
    assert_eq!(net.servers[0].flags[&b"b".to_vec()], 7);
    net.send(c, b"get a b\r\n");
    assert_eq!(
        String::from_utf8(net.take(c)).unwrap(),
        format!(
            "VALUE a 42 {}\r\n{big}\r\nVALUE b 7 5\r\nsmall\r\nEND\r\n",
            big.len()
        )
    );
    // noreply stays stripped, and its value compressed.
    net.send(
        c,
        format!("set n 1 0 {} noreply\r\n{big}\r\nget n\r\n", big.len()).as_bytes(),
    );
    assert_eq!(
        String::from_utf8(net.take(c)).unwrap(),
        format!("VALUE n 1 {}\r\n{big}\r\nEND\r\n", big.len())
    );
    // A client flag that is the pool's bit, append on a covered key, and
    // a meta get of the value are refused.
    net.send(c, format!("set z {bit} 0 1\r\nx\r\n").as_bytes());
    net.send(c, b"append a 0 0 1\r\nx\r\n");
    net.send(c, b"mg a v\r\n");
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert_eq!(reply.matches("CLIENT_ERROR ferrox: ").count(), 3, "{reply}");
    // A damaged value: the get answers an error, the session goes on.
    let stored = net.servers[1].data.get_mut(b"a".as_slice()).unwrap();
    stored[20] ^= 1;
    net.send(c, b"get a\r\nget b\r\n");
    let reply = String::from_utf8(net.take(c)).unwrap();
    assert!(
        reply.starts_with("SERVER_ERROR ferrox: the stored value of a is unreadable"),
        "{reply}"
    );
    assert!(
        reply.ends_with("VALUE b 7 5\r\nsmall\r\nEND\r\n"),
        "{reply}"
    );
}

#[test]
fn a_reload_turns_compression_off_and_old_values_still_read() {
    let (mut net, c) = with_client(compressing(Protocol::Redis, &[]));
    let big = json(2000);
    net.send(c, &cmd(&["SET", "a", &big]));
    net.take(c);
    let mut off = spec(2);
    off.compression = None;
    net.engine.reconfigure(vec![off]);
    // Without compression the stored form is what GET returns: turning
    // it off is for pools whose values were never compressed, or after
    // they were rewritten; turning it on again reads them back.
    net.send(c, &cmd(&["GET", "a"]));
    let reply = net.take(c);
    let header = reply.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    assert!(compress::is_frame(&reply[header..reply.len() - 2]));
    net.engine
        .reconfigure(vec![compressing(Protocol::Redis, &[])]);
    net.send(c, &cmd(&["GET", "a"]));
    assert_eq!(net.take(c), bulk(&big));
}
