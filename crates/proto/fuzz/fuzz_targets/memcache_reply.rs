//! Any bytes, read as any reply shape: `reply_len` never panics and never
//! reports more than it got; `values` stays inside a measured retrieval
//! reply; `quiet_suppresses` and `is_error` never panic.
#![no_main]

use ferrox_proto::memcache::{
    is_error, quiet_suppresses, reply_len, values, Limits, ReplyKind, COMMANDS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let kind = match selector % 4 {
        0 => ReplyKind::Retrieval,
        1 => ReplyKind::Line,
        2 => ReplyKind::Meta,
        _ => ReplyKind::Close,
    };
    let limits = Limits {
        max_value: 1 << 12,
        max_line: 1 << 10,
        ..Limits::default()
    };
    if let Ok(Some(len)) = reply_len(data, kind, &limits) {
        assert!(len <= data.len());
        assert!(len > 0 || kind == ReplyKind::Close);
        if kind == ReplyKind::Retrieval {
            let reply = &data[..len];
            let mut walk = values(reply);
            let mut at = 0;
            for (key, block) in walk.by_ref() {
                assert!(block.start == at && block.start < key.start && key.end < block.end);
                at = block.end;
            }
            assert_eq!(walk.position(), at);
            let last = &reply[at..];
            assert!(last == b"END\r\n" || is_error(last));
        }
    }
    let command = COMMANDS[selector as usize % COMMANDS.len()];
    quiet_suppresses(command, data);
    is_error(data);
});
